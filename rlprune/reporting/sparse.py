"""The report section of a weight-level (sparse) model: what it stores, and what it does not buy on a CPU.

A sparse model keeps its dense shapes, so its MACs and its latency in PyTorch or ONNX Runtime are the dense model's;
what shrinks is the number of non-zero parameters and the file that stores only them (values plus a 1-bit mask,
:func:`~rlprune.pruning.sparsity.save_sparse`). The section says so next to the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rlprune.cost.macs import count_nonzero, count_params, predict_costs
from rlprune.pruning.plan import Plan
from rlprune.pruning.sparsity import SparsityMasks, save_sparse
from rlprune.pruning.structure import Structure
from rlprune.reporting.tables import md_table

CPU_NOTE = (
    "dense kernels (PyTorch, ONNX Runtime on CPU) run a sparse layer as fast as a dense one: sparsity saves size, "
    "not time, here; 2:4 runs faster only on GPUs with sparse tensor cores"
)


def sparse_section(
    model: nn.Module, masks: SparsityMasks, plan: Plan, structure: Structure, work: Path, dense_file: Path
) -> dict[str, Any]:
    """Write ``model.sparse.safetensors`` (non-zero values + 1-bit masks) into ``work`` and return the numbers:
    non-zero parameters, the compact file against ``dense_file`` (the same weights in dense layout), and the
    non-zero MACs a sparse kernel would run."""
    path = save_sparse(model, masks, work / "model.sparse.safetensors", meta={"plan": plan.key()})
    nonzero, total = count_nonzero(model), count_params(model)
    sparse_bytes, dense_bytes = path.stat().st_size, dense_file.stat().st_size
    return {
        "granularity": plan.granularity,
        "params": total,
        "nonzero_params": nonzero,
        "nonzero_ratio": nonzero / total,
        "layer_sparsity": masks.stats(model)["layer_sparsity"],
        "sparse_layers": len(masks.masks),
        "file_bytes_dense_layout": dense_bytes,
        "file_bytes_sparse": sparse_bytes,
        "file_ratio": sparse_bytes / dense_bytes,
        "nonzero_macs_ratio": predict_costs(structure, plan.channels)[0] / structure.total_macs,
        "file": path.name,
        "note": CPU_NOTE,
    }


def sparse_markdown(block: dict[str, Any] | None) -> str:
    """The sparse section of report.md."""
    if not block:
        return ""
    rows = [
        ["non-zero parameters", f"{block['nonzero_params']:,} of {block['params']:,} ({block['nonzero_ratio']:.3f})"],
        ["sparsity of the sparsified layers", f"{block['layer_sparsity']:.3f} ({block['sparse_layers']} layers)"],
        ["file, dense layout (bytes)", f"{block['file_bytes_dense_layout']:,}"],
        [f"file, {block['file']} (bytes)", f"{block['file_bytes_sparse']:,} ({block['file_ratio']:.3f})"],
        ["non-zero MACs / dense MACs", f"{block['nonzero_macs_ratio']:.3f}"],
    ]
    return f"\n## Sparsity ({block['granularity']})\n\n{md_table(['', ''], rows)}\n\nNote: {block['note']}.\n"


__all__ = ["CPU_NOTE", "sparse_markdown", "sparse_section"]
