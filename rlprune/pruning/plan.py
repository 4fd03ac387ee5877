"""Pruning plans: per-unit ratios, the channels they keep, and (after pruning) which channel indices were kept.

A plan is tied to one architecture through its fingerprint; its JSON form is the portable way to share a pruned
model: dense architecture + plan + safetensors weights rebuild it exactly, with nothing unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlprune.errors import RLPruneError
from rlprune.io.files import atomic_write_text, read_json
from rlprune.io.schemas import HandPlanSchema, PlanSchema, validated
from rlprune.pruning.options import PruneOptions
from rlprune.pruning.structure import Structure

PLAN_FORMAT = "rlprune-plan/1"


def nm_level(label: str) -> float | None:
    """The ratio of an N:M layer that follows the pattern (``1 - n/m``: 0.5 for ``2:4``); ``None`` for other
    granularities. Such a layer has exactly two levels, this one and dense."""
    if ":" not in label:
        return None
    n, m = (int(v) for v in label.split(":"))
    return 1.0 - n / m


def snap_to_level(ratio: float, level: float | None) -> float:
    """The ratio an N:M layer really gets for ``ratio``: the nearer of dense (0) and its ``level``; ``ratio`` itself
    when there is no level (channel and unstructured plans)."""
    if level is None:
        return ratio
    return level if ratio >= level / 2 else 0.0


log = logging.getLogger("rlprune.pruning")


def kept_channels(
    channels: int, ratio: float, round_to: int | None = None, min_channels: int = 1, groups: int = 1
) -> int:
    """Channels a unit keeps for a pruning ratio: ``round((1-ratio)·C)``, rounded to a multiple of ``round_to``
    (never below one multiple), then clipped to ``[min_channels, C]``; a ratio that removes nothing keeps all ``C``.

    A unit cut into ``groups`` slices by grouped convolutions keeps a multiple of ``lcm(groups, round_to)`` (the
    nearest one, at least one multiple): every slice must keep the same number of channels.
    """
    if groups > 1:
        step = math.lcm(groups, round_to or 1)
        if channels % step:
            step = groups
        keep = step * round((1.0 - ratio) * channels / step)
        floor = step * math.ceil(max(1, min_channels) / step)
        return int(min(channels, max(floor, keep, step)))
    keep = round((1.0 - ratio) * channels)
    if keep >= channels:  # nothing removed: the unit stays as it is, even at a width off the rounding grid
        return int(channels)
    if round_to and round_to > 1 and channels > round_to:
        keep = max(round_to, round_to * round(keep / round_to))
    return int(min(channels, max(min_channels, keep, 1)))


@dataclass
class Plan:
    """How much of each unit to prune.

    :param fingerprint: architecture fingerprint of the dense model the plan is for.
    :param ratios: unit name -> pruning ratio in [0, 1).
    :param channels: unit name -> channels kept (after rounding and the minimum).
    :param kept: unit name -> indices of the kept channels, filled in by pruning (needed to rebuild a pruned model).
    :param options: the parts the user ignored and the head counts given when the model was analyzed; pruning (and
        rebuilding a pruned checkpoint) uses the same.
    :param granularity: ``channel`` (units are channel groups, ``channels`` counts kept channels), or for a
        weight-level plan (:mod:`rlprune.pruning.weights`) ``unstructured`` or an N:M pattern such as ``2:4``
        (units are layers, ``channels`` counts the weights each keeps).
    """

    fingerprint: str
    ratios: dict[str, float]
    channels: dict[str, int]
    model: str = ""
    importance: str = "l1"
    round_to: int | None = None
    min_channels: int = 1
    kept: dict[str, list[int]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    options: PruneOptions = field(default_factory=PruneOptions)
    granularity: str = "channel"

    @classmethod
    def from_ratios(
        cls,
        structure: Structure,
        ratios: Mapping[str, float] | list[float],
        *,
        model: str = "",
        importance: str = "l1",
        round_to: int | None = None,
        min_channels: int = 1,
    ) -> Plan:
        """Build a plan from ratios by unit name (missing units keep everything) or a list in forward order.

        Ratios outside [0, 1) and unknown unit names are errors; a ratio that would leave fewer than ``min_channels``
        channels is clipped with a warning naming the unit.
        """
        if isinstance(ratios, list | tuple):
            if len(ratios) != len(structure.units):
                raise RLPruneError(f"plan: {len(ratios)} ratios given for {len(structure.units)} prunable units")
            ratios = {u.name: float(r) for u, r in zip(structure.units, ratios, strict=True)}
        known = {u.name for u in structure.units}
        for name in ratios:
            if name not in known:
                raise RLPruneError(f"plan: unit '{name}' is not a prunable unit of this model")
        if min_channels < 1:
            raise RLPruneError(f"min_channels: expected >= 1, got {min_channels}")
        full: dict[str, float] = {}
        channels: dict[str, int] = {}
        sparse_level = nm_level(structure.granularity)
        for unit in structure.units:
            r = float(ratios.get(unit.name, 0.0))
            if not (0.0 <= r < 1.0) or math.isnan(r):
                raise RLPruneError(f"plan: unit '{unit.name}': ratio {r} outside [0, 1)")
            r = snap_to_level(r, sparse_level)  # an N:M layer follows the pattern or stays dense
            full[unit.name] = r
            keep = kept_channels(unit.channels, r, round_to, min_channels, unit.groups)
            if round((1.0 - r) * unit.channels) < min(min_channels, unit.channels):
                log.warning(
                    "unit '%s': ratio %.3f would leave %d of %d channels; keeping %d",
                    unit.name,
                    r,
                    round((1.0 - r) * unit.channels),
                    unit.channels,
                    keep,
                )
            channels[unit.name] = keep
        return cls(
            fingerprint=structure.fingerprint,
            ratios=full,
            channels=channels,
            model=model,
            importance=importance,
            round_to=round_to,
            min_channels=min_channels,
            options=structure.options,
            granularity=structure.granularity,
        )

    def check(self, structure: Structure, what: str = "plan") -> None:
        """Refuse a plan made for another architecture, or one whose channel counts do not fit the units or do not
        follow from its ratios (a plan must not say 50% while keeping every channel)."""
        if self.fingerprint != structure.fingerprint:
            raise RLPruneError(
                f"{what}: made for another model (fingerprint {self.fingerprint[:20]}, this model is "
                f"{structure.fingerprint}{', plan model ' + repr(self.model[:40]) if self.model else ''})"
            )
        if self.options != structure.options:
            raise RLPruneError(
                f"{what}: made with prune options {self.options.to_dict() or 'none'}, the model was analyzed with "
                f"{structure.options.to_dict() or 'none'}"[:300]
            )
        sizes = {u.name: u.channels for u in structure.units}
        slices = {u.name: u.groups for u in structure.units}
        for name, n in self.channels.items():
            if name not in sizes:
                raise RLPruneError(f"{what}: unit '{name[:60]}' is not a prunable unit of this model")
            if not 1 <= n <= sizes[name]:
                raise RLPruneError(f"{what}: unit '{name[:60]}' keeps {n} channels; it has 1 to {sizes[name]}")
            step = self.round_to if self.round_to and self.round_to < sizes[name] else 1  # no rounding above C
            # a unit feeding grouped convolutions keeps a multiple of its groups (kept_channels rounds to them)
            slack = max(step, slices[name], min(self.min_channels, sizes[name]), 1)
            if abs(n - round((1.0 - self.ratios.get(name, 0.0)) * sizes[name])) > slack:
                raise RLPruneError(
                    f"{what}: unit '{name[:60]}' keeps {n} of {sizes[name]} channels, which does not match its ratio "
                    f"{self.ratios.get(name, 0.0):.4g}"
                )
            level = nm_level(self.granularity)
            if level is not None and self.ratios.get(name, 0.0) not in (0.0, level):
                raise RLPruneError(
                    f"{what}: layer '{name[:60]}' has ratio {self.ratios.get(name, 0.0):.4g}; a {self.granularity} "
                    f"layer is dense (0) or follows the pattern ({level:g})"
                )

    def key(self) -> str:
        """Hash of what decides the pruned model: channels kept per unit and the importance criterion."""
        what = [self.fingerprint, sorted(self.channels.items()), self.importance, self.kept]
        if self.options:  # only when set: plans without options keep the keys they always had
            what.append(self.options.to_dict())
        if self.granularity != "channel":
            what.append(self.granularity)
        payload = json.dumps(what, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        """The plan as saved: checked by :class:`~rlprune.io.schemas.PlanSchema` on the way out as on the way in
        (:meth:`from_dict`), so a plan this project writes is always one it reads back."""
        data = {
            "format": PLAN_FORMAT,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "importance": self.importance,
            "round_to": self.round_to,
            "min_channels": self.min_channels,
            "ratios": self.ratios,
            "channels": self.channels,
            "kept": self.kept,
            "metrics": self.metrics,
            **self.options.to_dict(),
            **({"granularity": self.granularity} if self.granularity != "channel" else {}),
        }
        validated(PlanSchema, data, f"plan{' of ' + self.model[:60] if self.model else ''}")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> Plan:
        """A saved plan, validated by :class:`~rlprune.io.schemas.PlanSchema` (ranges, finite, consistent) first."""
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise RLPruneError(f"{source}: not an rlprune plan (expected format '{PLAN_FORMAT}')")
        s = validated(PlanSchema, dict(data), source)  # one definition of a plan's fields and their defaults
        return cls(
            fingerprint=s.fingerprint,
            ratios=dict(s.ratios),
            channels=dict(s.channels),
            model=s.model,
            importance=s.importance,
            round_to=s.round_to,
            min_channels=s.min_channels,
            kept={k: list(v) for k, v in s.kept.items()} if s.kept else None,
            metrics=dict(s.metrics),
            options=PruneOptions.of(s.ignore, s.heads),
            granularity=s.granularity,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:  # a bare NaN is not JSON
            text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        except ValueError as exc:
            raise RLPruneError(f"{path}: plan holds a non-finite number ({exc})") from None
        atomic_write_text(path, text + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, structure: Structure | None = None) -> Plan:
        """Read a saved plan, or — given the model's ``structure`` — a hand-written one.

        A hand-written plan is JSON ``{"ratios": {unit: ratio, ...} or [ratio per unit], "importance": "l1",
        "round_to": null, "min_channels": 1}`` (only ``ratios`` is required; units left out are not pruned).
        """
        path = Path(path)
        data = read_json(path, "plan file")
        if structure is not None and isinstance(data, Mapping) and "format" not in data:
            unknown = sorted(set(data) - {"ratios", "importance", "round_to", "min_channels", "model"})
            if unknown or "ratios" not in data:
                raise RLPruneError(
                    f"{path}: a hand-written plan needs 'ratios' and may have importance, round_to, min_channels"
                    + (f" (unknown key '{str(unknown[0])[:40]}')" if unknown else "")
                )
            ratios = data["ratios"]
            if not isinstance(ratios, Mapping | list):
                raise RLPruneError(f"{path}: 'ratios' must map unit names to ratios or list one ratio per unit")
            hand = validated(HandPlanSchema, dict(data), str(path))
            try:
                return cls.from_ratios(
                    structure,
                    hand.ratios,
                    model=hand.model,
                    importance=hand.importance,
                    round_to=hand.round_to,
                    min_channels=hand.min_channels,
                )
            except RLPruneError as exc:
                raise RLPruneError(f"{path}: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise RLPruneError(f"{path}: malformed hand-written plan ({exc})") from None
        return cls.from_dict(data, str(path))
