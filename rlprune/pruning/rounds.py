"""Iterative pruning in rounds: a schedule of targets, prune a little then fine-tune, resumable after every round.

Pruning a lot at once removes weights the network still relies on; removing them in steps, with fine-tuning in
between, lets the rest take over (Zhu & Gupta, 2017: "To prune, or not to prune"; TF Model Optimization's
``PolynomialDecay`` schedule). :func:`polynomial_schedule` gives the per-round targets (cubic by default: big steps
early, while there is most redundancy, small ones near the end), and :func:`iterative_sparsify` runs the rounds for
magnitude sparsity, writing ``round_<k>.safetensors`` + ``rounds.json`` after each so a crashed run resumes at the
first unfinished round.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.sparsity import SparsityMasks, load_sparse, save_sparse, sparsify

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
    done: list[dict[str, Any]] = []
    masks: SparsityMasks | None = None
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError:
            raise RLPruneError(f"{state_path}: not valid JSON; delete the directory to start over") from None
        if state.get("targets") != targets or state.get("pattern") != pattern:
            raise RLPruneError(
                f"{state_path}: holds rounds of another schedule ({state.get('targets')}, {state.get('pattern')}); "
                "use a new directory"
            )
        done = list(state.get("done", []))
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
        tmp = state_path.with_name(STATE + ".tmp")
        tmp.write_text(json.dumps({"targets": targets, "pattern": pattern, "done": done}, indent=1) + "\n")
        tmp.replace(state_path)
    assert masks is not None
    return masks


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value
