"""Compare a pruned model with its dense original: parameters, MACs and measured CPU latency, as one record.

``rlprune apply`` / ``finetune`` write this record (with accuracies) into ``report.json``; from Python,
:func:`report` gives the same numbers for any pair of models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from rlprune.cost.latency import compare_latency
from rlprune.cost.macs import count_macs, count_params


def report(
    dense: nn.Module,
    pruned: nn.Module,
    input_shape: Sequence[int],
    *,
    latency_batches: Sequence[int] = (1, 64),
    repeats: int = 15,
    threads: int | None = None,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Parameters, MACs and CPU latency (median of interleaved rounds) of both models, and their ratios.

    :param input_shape: one input without the batch dimension, e.g. ``(3, 32, 32)``.
    :param latency_batches: batch sizes to time (empty: no timing).
    :param metrics: optional numbers per model, e.g. ``{"dense": {"val": 90.1}, "pruned": {"val": 89.4}}``.
    """
    shape = tuple(int(s) for s in input_shape)
    dense, pruned = dense.eval().cpu(), pruned.eval().cpu()
    out: dict[str, Any] = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        out[name] = {"params": count_params(model), "macs": count_macs(model, shape), **(metrics or {}).get(name, {})}
    lat = compare_latency({"dense": dense, "pruned": pruned}, shape, latency_batches, repeats=repeats, threads=threads)
    out["latency_ms_cpu"] = {name: {str(bs): ms for bs, ms in by.items()} for name, by in lat.items()}
    out["ratios"] = {
        "params": out["pruned"]["params"] / out["dense"]["params"],
        "macs": out["pruned"]["macs"] / out["dense"]["macs"],
        **{f"latency_batch{bs}": lat["pruned"][bs] / lat["dense"][bs] for bs in latency_batches},
    }
    return out


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["md_table", "report"]
