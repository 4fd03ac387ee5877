"""The observation a policy sees for one unit: a normalized, model-agnostic embedding (AMC's state, extended).

Feature sets are versioned: every saved policy records the version it was trained with and is always rolled out
with that version's features, so an older policy keeps working when a new set becomes the default.

- **v2** (AMC-like): absolute shares (a unit's MACs / total MACs, ...), relative depth, the budget state.
- **v3** (default): the same information, expressed so that it means the same on any depth and width. A share of
  the total shrinks as a network gets deeper (a policy trained on 12 units sees a 27-unit network as "all tiny
  layers"); v3 compares a unit with the network's *mean* unit instead, places it by stage and position in its
  stage, adds cumulative MACs before and after it, a redundancy signal (the spread of its channels' weight norms),
  and the uniform ratio the rest of the network would need to meet the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlprune.errors import RLPruneError
from rlprune.pruning.structure import Structure, Unit

# The budget state at a step; every version observes a subset of these (computed by rlprune.envs.episode.Episode).
DYNAMIC: tuple[str, ...] = (
    "macs_removed",  # MACs removed by earlier decisions / total
    "macs_later",  # dense MACs of later units / total
    "previous_ratio",  # the ratio chosen for the previous unit
    "target",  # the budget (pruned / dense cost)
    "min_ratio_needed",  # the smallest ratio for this unit that keeps the budget reachable
    "max_ratio_allowed",  # the largest ratio for this unit that keeps the budget from being overshot
    "uniform_ratio_rest",  # the one ratio for this and every later unit that would meet the target
)


@dataclass(frozen=True)
class FeatureSpec:
    """One version of the observation: static per-unit features (computed once per model) then dynamic ones."""

    version: int
    static_names: tuple[str, ...]
    dynamic_names: tuple[str, ...]
    static_fn: Callable[[Structure], np.ndarray]

    @property
    def names(self) -> tuple[str, ...]:
        return self.static_names + self.dynamic_names

    @property
    def size(self) -> int:
        return len(self.static_names) + len(self.dynamic_names)

    def static(self, structure: Structure) -> np.ndarray:
        """Per-unit static features, shape ``(units, len(static_names))``."""
        return self.static_fn(structure)

    def observation(self, static_row: np.ndarray, dynamic: Mapping[str, float]) -> np.ndarray:
        """One unit's observation: its static row, then the dynamic values this version uses, clipped to [0, 1]."""
        values = np.asarray([dynamic[name] for name in self.dynamic_names], dtype=np.float32)
        return np.clip(np.concatenate([static_row, values]), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------ v2
_V2_STATIC = (
    "relative_depth",  # index / (units - 1)
    "is_conv",  # layer type one-hot
    "is_depthwise",
    "is_linear",  # also a transformer block's MLP hidden neurons (kind "mlp"); attention heads set none of the three
    "log_in_channels",  # log2(in_channels) / 11
    "log_channels",  # log2(prunable channels) / 11
    "kernel",  # kernel / 7
    "stride",  # stride / 2
    "fmap",  # log2(feature-map side) / log2(input side)
    "macs_share",  # unit's MACs / total MACs
    "params_share",  # unit's parameters / total parameters
    "coupled",  # log2(coupled modules) / 7
)


def _input_side(structure: Structure) -> int:
    return structure.input_shape[-1] if len(structure.input_shape) >= 2 else 1


def _v2_static(structure: Structure) -> np.ndarray:
    n, side = len(structure.units), _input_side(structure)
    rows = [
        [
            u.index / max(1, n - 1),
            float(u.kind == "conv"),
            float(u.kind == "depthwise"),
            float(u.kind in ("linear", "mlp")),
            math.log2(max(1, u.in_channels)) / 11,
            math.log2(max(1, u.channels)) / 11,
            u.kernel / 7,
            u.stride / 2,
            _fmap(u, side),
            u.macs / max(1, structure.total_macs),
            u.params / max(1, structure.total_params),
            math.log2(max(1, u.coupled)) / 7,
        ]
        for u in structure.units
    ]
    return np.asarray(rows, dtype=np.float32).reshape(n, len(_V2_STATIC))


def _fmap(u: Unit, side: int) -> float:
    return math.log2(max(1, u.fmap)) / max(1.0, math.log2(max(2, side)))


# ------------------------------------------------------------------------------------------------------------ v3
_V3_STATIC = (
    "relative_depth",  # index / (units - 1)
    "stage_position",  # stage index / (stages - 1); a stage = the units at one feature-map size
    "position_in_stage",  # rank within its stage / (stage size - 1)
    "is_conv",  # layer type one-hot
    "is_depthwise",
    "is_linear",  # linear, or a transformer block's MLP hidden neurons
    "is_heads",  # whole attention heads
    "width_rel",  # 0.5 + log2(width / median unit width) / 6; width = channels (x head_dim for heads)
    "expansion",  # 0.5 + log2(width / in_channels) / 6
    "kernel",  # kernel / 7
    "stride",  # stride / 2
    "fmap",  # log2(feature-map side) / log2(input side)
    "macs_rel",  # 0.5 + log2(unit's MACs / mean unit's MACs) / 8
    "params_rel",  # 0.5 + log2(unit's parameters / mean unit's parameters) / 8
    "macs_before",  # dense MACs of earlier units / total (where in the compute the unit sits)
    "coupled",  # log2(coupled modules) / 7
    "norm_spread",  # coefficient of variation of the channels' weight norms (Unit.norm_spread), capped at 1
)


def _width(u: Unit) -> int:
    return max(1, u.channels * max(1, u.head_dim))


def _log_rel(value: float, reference: float, span: float) -> float:
    if value <= 0 or reference <= 0:
        return 0.0
    return 0.5 + math.log2(value / reference) / span


def _stages(units: list[Unit]) -> tuple[list[int], list[int], list[int]]:
    """Per unit: its stage index (feature-map sizes from largest to smallest), rank in the stage, stage size."""
    sizes = sorted({u.fmap for u in units}, reverse=True)
    stage = [sizes.index(u.fmap) for u in units]
    rank, count = [], []
    for i, s in enumerate(stage):
        rank.append(sum(1 for j in range(i) if stage[j] == s))
        count.append(sum(1 for x in stage if x == s))
    return stage, rank, count


def _v3_static(structure: Structure) -> np.ndarray:
    units = structure.units
    n, side = len(units), _input_side(structure)
    stage, rank, count = _stages(units)
    n_stages = max(stage) + 1 if units else 1
    median_width = float(np.median([_width(u) for u in units])) if units else 1.0
    mean_macs = structure.total_macs / max(1, n)
    mean_params = sum(u.params for u in units) / max(1, n)
    before = 0
    rows = []
    for i, u in enumerate(units):
        rows.append(
            [
                u.index / max(1, n - 1),
                stage[i] / max(1, n_stages - 1),
                rank[i] / max(1, count[i] - 1),
                float(u.kind == "conv"),
                float(u.kind == "depthwise"),
                float(u.kind in ("linear", "mlp")),
                float(u.kind == "heads"),
                _log_rel(_width(u), median_width, 6),
                _log_rel(_width(u), max(1, u.in_channels), 6),
                u.kernel / 7,
                u.stride / 2,
                _fmap(u, side),
                _log_rel(u.macs, mean_macs, 8),
                _log_rel(u.params, mean_params, 8),
                before / max(1, structure.total_macs),
                math.log2(max(1, u.coupled)) / 7,
                min(1.0, float(u.norm_spread)),
            ]
        )
        before += u.macs
    return np.asarray(rows, dtype=np.float32).reshape(n, len(_V3_STATIC))


SPECS: dict[int, FeatureSpec] = {
    2: FeatureSpec(2, _V2_STATIC, DYNAMIC[:6], _v2_static),
    3: FeatureSpec(3, _V3_STATIC, DYNAMIC, _v3_static),
}
FEATURE_VERSION = 3  # what new policies are trained with

# Groups of v3 features, for ablations (benchmarks/generalize.py): which kind of information carries a policy
# from one network to another.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "position": ("relative_depth", "stage_position", "position_in_stage", "macs_before"),
    "layer_type": ("is_conv", "is_depthwise", "is_linear", "is_heads", "kernel", "stride"),
    "size": ("width_rel", "expansion", "fmap", "macs_rel", "params_rel", "coupled"),
    "redundancy": ("norm_spread",),
    "budget_state": DYNAMIC,
}


def feature_spec(version: int = FEATURE_VERSION) -> FeatureSpec:
    """The feature set of ``version``; an unknown version (a policy from a newer rlprune) is refused in one line."""
    spec = SPECS.get(version) if isinstance(version, int) else None
    if spec is None:
        raise RLPruneError(
            f"feature spec v{version}: unknown to this rlprune (it knows {', '.join(f'v{v}' for v in sorted(SPECS))})"
        )
    return spec


FEATURES: tuple[str, ...] = SPECS[FEATURE_VERSION].names
N_FEATURES = len(FEATURES)


def static_features(structure: Structure, version: int = FEATURE_VERSION) -> np.ndarray:
    """Per-unit features that do not depend on earlier decisions, shape ``(units, static features)``."""
    return feature_spec(version).static(structure)


ENVELOPE_MARGIN = 0.02  # features are scaled to about [0, 1]: a unit this close to the range is inside it


def feature_envelope(static: Sequence[np.ndarray], version: int) -> dict[str, Any]:
    """The range of every static feature over the units a policy was trained on (one array of
    :func:`static_features` per training model), recorded in the policy so that a rollout can tell when a new model's
    units lie outside anything the policy has seen — where its actions are an extrapolation, not something learned."""
    names = feature_spec(version).static_names
    arrays = [np.asarray(s, dtype=np.float64) for s in static]
    if not arrays or any(a.ndim != 2 or a.shape[1] != len(names) for a in arrays) or not sum(len(a) for a in arrays):
        raise RLPruneError(f"feature envelope: expected rows of {len(names)} v{version} static features")
    rows = np.clip(np.concatenate(arrays), 0.0, 1.0)  # as the policy observed them
    return {"names": list(names), "low": rows.min(0).round(6).tolist(), "high": rows.max(0).round(6).tolist()}


def check_envelope(envelope: Any, version: int) -> None:
    """Refuse an envelope that does not name the static features of ``version`` in order — one from another feature
    set would compare unrelated columns. The message is completed by the caller with where the envelope came from."""
    names = feature_spec(version).static_names
    if not isinstance(envelope, Mapping) or list(envelope.get("names", ())) != list(names):
        raise RLPruneError(f"feature_envelope does not list the v{version} static features")


def outside_envelope(static: np.ndarray, envelope: Mapping[str, Any]) -> dict[str, Any]:
    """Which units of ``static`` (one model's :func:`static_features`) lie outside ``envelope`` by more than
    :data:`ENVELOPE_MARGIN`, compared as the policy observes them (clipped to [0, 1]): ``{"units": how many,
    "of": units, "indices": [unit indices], "features": {feature: units outside on it}}``."""
    names, low, high = (list(envelope.get(k, ())) for k in ("names", "low", "high"))
    static = np.asarray(static, dtype=np.float64)
    if not len(names) == len(low) == len(high) or static.ndim != 2 or static.shape[1] != len(names):
        raise RLPruneError(
            f"feature envelope: expected names, low and high for the {static.shape[-1]} static features of the units"
        )
    static = np.clip(static, 0.0, 1.0)
    out = (static < np.asarray(low) - ENVELOPE_MARGIN) | (static > np.asarray(high) + ENVELOPE_MARGIN)
    indices = [int(i) for i in np.flatnonzero(out.any(1))]
    return {
        "units": len(indices),
        "of": len(static),
        "indices": indices,
        "features": {str(name): int(n) for name, n in zip(names, out.sum(0), strict=True) if n},
    }


__all__ = [
    "DYNAMIC",
    "ENVELOPE_MARGIN",
    "FEATURES",
    "FEATURE_GROUPS",
    "FEATURE_VERSION",
    "N_FEATURES",
    "SPECS",
    "FeatureSpec",
    "check_envelope",
    "feature_envelope",
    "feature_spec",
    "outside_envelope",
    "static_features",
]
