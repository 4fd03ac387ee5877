"""Iterative pruning in rounds: a schedule of targets, prune a little then fine-tune, resumable after every round.

Pruning a lot at once removes weights the network still relies on; removing them in steps, with fine-tuning in
between, lets the rest take over (Zhu & Gupta, 2017: "To prune, or not to prune"; TF Model Optimization's
``PolynomialDecay`` schedule). :func:`polynomial_schedule` gives the per-round targets (cubic by default: big steps
early, while there is most redundancy, small ones near the end), and :func:`iterative_sparsify` runs the rounds for
magnitude sparsity, writing ``round_<k>.safetensors`` + ``rounds.json`` after each so a crashed run resumes at the
first unfinished round. Channel plans in rounds (``rounds:`` in a ``rlprune run`` config) are run by
:mod:`rlprune.jobs.rounds` with the same schedule and state file; :func:`compose_plans` turns a plan made for an
already pruned model into one for the original dense model, which is what a pruned checkpoint records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from rlprune.errors import RLPruneError
from rlprune.io.rundir import RunDir
from rlprune.pruning.plan import Plan
from rlprune.pruning.sparsity import SparsityMasks, load_sparse, save_sparse, sparsify
from rlprune.pruning.structure import Structure

STATE = "rounds.json"


def polynomial_schedule(initial: float, final: float, rounds: int, power: float = 3.0) -> list[float]:
    """Per-round targets from ``initial`` to ``final``: ``final + (initial - final) * (1 - k / rounds) ** power`` for
    rounds ``k = 1..rounds`` (the last round reaches ``final`` exactly).

    Works for sparsities rising (0 -> 0.8) and for kept-cost ratios falling (1.0 -> 0.5 of MACs) alike.
    """
    if rounds < 1:
        raise RLPruneError(f"rounds: expected >= 1, got {rounds}")
    if not all(math.isfinite(v) for v in (initial, final, power)) or power <= 0:
        raise RLPruneError(f"rounds schedule: initial, final and power must be finite (power > 0), got {power}")
    return [final + (initial - final) * (1.0 - k / rounds) ** power for k in range(1, rounds + 1)]


def iterative_sparsify(
    model: nn.Module,
    targets: Sequence[float],
    finetune: Callable[[nn.Module, int], Any],
    directory: str | Path,
    *,
    pattern: str = "unstructured",
) -> SparsityMasks:
    """Raise magnitude sparsity round by round to each of ``targets``, calling ``finetune(model, round)`` with the
    masks attached (zeros stay zero) after each step; resumable.

    Each round's weights and masks are saved before the round is recorded as done, so after a crash the model is
    reloaded from the last finished round and only the remaining rounds run. A directory holding rounds of a
    different schedule is refused rather than silently mixed.

    :param targets: non-decreasing per-layer sparsities, e.g. ``polynomial_schedule(0.0, 0.8, 3)``.
    :param finetune: trains ``model`` in place for one round (e.g. ``lambda m, k: rp.finetune(m, loader, epochs=2)``).
    """
    targets = [float(t) for t in targets]
    if not targets or any(not 0.0 <= t < 1.0 for t in targets) or targets != sorted(targets):
        raise RLPruneError(f"rounds: targets must be non-decreasing sparsities in [0, 1), got {targets}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / STATE
    schedule = {"targets": targets, "pattern": pattern}
    done = finished_rounds(state_path, schedule)
    masks: SparsityMasks | None = None
    if done:
        masks = load_sparse(model, directory / done[-1]["file"])
    for k in range(len(done), len(targets)):
        masks = sparsify(model, targets[k]) if pattern == "unstructured" else sparsify(model, pattern=pattern)
        masks.attach(model)
        try:
            result = finetune(model, k)
        finally:
            masks.detach()
        masks.apply(model)
        name = f"round_{k}.safetensors"
        save_sparse(model, masks, directory / name)
        done.append({"round": k, "target": targets[k], "file": name, "finetune": _jsonable(result)})
        record_rounds(state_path, schedule, done)
    assert masks is not None
    return masks


def finished_rounds(state_path: Path, schedule: dict[str, Any]) -> list[dict[str, Any]]:
    """The rounds ``state_path`` records as finished (none if it does not exist), refusing a file written for another
    ``schedule`` (targets and whatever else decides the rounds): resuming must not mix two schedules' rounds."""
    run = RunDir(state_path.parent, "rounds run directory")
    state = run.read_json(state_path.name, "rounds record")
    if state is None:
        return []
    if not isinstance(state, dict) or not isinstance(state.get("done", []), list):
        raise RLPruneError(f"{state_path}: expected a rounds record with a 'done' list; delete it to start over")
    run.check_same({k: v for k, v in state.items() if k != "done"}, schedule, what="rounds schedule")
    return list(state.get("done", []))


def record_rounds(state_path: Path, schedule: dict[str, Any], done: list[dict[str, Any]]) -> None:
    """Write the schedule and the finished rounds atomically: a crash leaves the previous record, never half a file."""
    RunDir(state_path.parent).write_json(state_path.name, {**schedule, "done": done})


def compose_plans(base: Plan, step: Plan, dense: Structure) -> Plan:
    """The plan for the original dense model (``dense``'s structure) that gives what ``step`` gives when applied to
    the model ``base`` pruned it to: kept channel indices are mapped back through ``base``'s.

    Both plans must come out of :func:`~rlprune.pruning.cut.prune` (``kept`` filled in). The result is what a checkpoint
    of a model pruned in several rounds records, so that it rebuilds from the dense architecture like any other.
    """
    if base.kept is None or step.kept is None:
        raise RLPruneError("plan: composing rounds needs plans with kept channel indices (as pruning returns them)")
    if base.fingerprint != dense.fingerprint:
        raise RLPruneError("plan: the earlier round's plan was made for another model than the dense one")
    sizes = {u.name: u.channels for u in dense.units}
    unknown = sorted((set(step.kept) | set(base.kept)) - set(sizes))
    if unknown:
        raise RLPruneError(f"plan: unit '{unknown[0][:60]}' is not a prunable unit of the dense model")
    kept: dict[str, list[int]] = {}
    for name, before in base.kept.items():
        idxs = step.kept.get(name, list(range(len(before))))
        if idxs and max(idxs) >= len(before):
            raise RLPruneError(f"plan: unit '{name[:60]}': the round keeps channel {max(idxs)} of {len(before)}")
        kept[name] = [before[i] for i in idxs]
    channels = {name: step.channels.get(name, base.channels.get(name, sizes[name])) for name in kept}
    ratios = {name: 1.0 - channels[name] / sizes[name] for name in kept}
    return Plan(
        fingerprint=base.fingerprint,
        ratios=ratios,
        channels=channels,
        model=base.model,
        importance=step.importance,
        round_to=step.round_to or base.round_to,
        min_channels=max(base.min_channels, step.min_channels),
        kept=kept,
        options=base.options,  # rebuilt from the dense model analyzed as the first round analyzed it
    )


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value
