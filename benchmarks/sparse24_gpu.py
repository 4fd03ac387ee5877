"""2:4 semi-structured sparsity on a GPU: PyTorch's sparse kernels (cuSPARSELt, or CUTLASS) against dense fp16.

    python benchmarks/sparse24_gpu.py [--checkpoint zoo/vit_cifar10.json] [--batch 256 --batch 1024]

On CPU a 2:4 model runs dense kernels and saves size, not time (benchmarks/results/sparsity_cpu.md). NVIDIA GPUs
from Ampere on multiply a 2:4 weight matrix at up to twice the dense rate, and ``torch.sparse.
to_sparse_semi_structured`` reaches those kernels for the 2-D weights of ``nn.Linear`` layers. This script zeroes 2
of every 4 input weights of every eligible Linear layer by magnitude (:func:`rlprune.sparsify`, ``pattern="2:4"``),
moves the model to the GPU in fp16, and measures:

- test accuracy of the dense model and of the 2:4 model (no fine-tune), both in fp16 on the GPU;
- the model's latency with the masked weights in dense kernels and in semi-structured kernels, per batch size;
- each eligible layer alone (its weight shape, ``batch x tokens`` rows of input), dense against semi-structured,
  and the same for reference transformer shapes (ViT-B/16's MLP and attention projections) where the kernels have
  room to pay off.

Eligible: a weight of at least, and a multiple of, the kernels' minimum rows and columns for fp16; the other layers
(and every convolution) stay dense and are listed. Needs a CUDA GPU of compute capability 8.0 or newer; refuses in one
line otherwise. Writes benchmarks/results/sparse24_gpu.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _results import environment, md_table, reproduce_command, write_results
from torch import nn

from rlprune.data import BatchLoader, splits_from_meta
from rlprune.io.checkpoint import load_checkpoint
from rlprune.pruning.sparsity import nm_mask, sparsify

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sparse24_gpu"
# (name, out_features, in_features) of ViT-B/16 layers: the shapes 2:4 kernels are built for
REFERENCE_SHAPES = (("vit_b16 mlp.fc1", 3072, 768), ("vit_b16 mlp.fc2", 768, 3072), ("vit_b16 attn.qkv", 2304, 768))


def use_available_backend() -> str:
    """``cuSPARSELt`` (what ``to_sparse_semi_structured`` uses by default) when this build has it, else CUTLASS."""
    from torch.sparse.semi_structured import SparseSemiStructuredTensor

    if torch.backends.cusparselt.is_available():
        return "cuSPARSELt"
    SparseSemiStructuredTensor._FORCE_CUTLASS = True
    return "CUTLASS"


def min_shape(dtype: torch.dtype = torch.float16) -> tuple[int, int]:
    """Smallest (rows, cols) multiple a weight needs for the semi-structured kernels ``to_sparse_semi_structured``
    picks (cuSPARSELt unless CUTLASS is forced), as this torch declares them."""
    from torch.sparse.semi_structured import (
        SparseSemiStructuredTensor,
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    cls = SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS else None
    cls = cls or SparseSemiStructuredTensorCUSPARSELT
    constraint = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    return constraint.sparse_min_rows, constraint.sparse_min_cols


def eligible_linears(model: nn.Module, rows: int, cols: int) -> tuple[list[str], list[str]]:
    """Names of the Linear layers whose weight the kernels take (at least and a multiple of ``rows`` x ``cols``),
    and of those left dense."""
    take, skip = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            m, n = module.weight.shape
            ok = m >= rows and m % rows == 0 and n >= cols and n % cols == 0
            (take if ok else skip).append(name)
    return take, skip


def to_semi_structured(model: nn.Module, names: list[str]) -> None:
    """Replace the weights of ``names`` (already 2:4, on the GPU, fp16) by semi-structured sparse tensors."""
    from torch.sparse import to_sparse_semi_structured

    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)


def gpu_ms(fn: Any, warmup: int = 10, repeats: int = 50) -> float:
    """Median milliseconds per call over ``repeats`` CUDA-event-timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Any, mean: Any, std: Any, batch: int) -> float:
    correct = total = 0
    for x, y in BatchLoader(dataset, batch, mean, std, device="cuda"):
        correct += (model(x.half()).argmax(1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / total


@torch.no_grad()
def rows_per_sample(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> int:
    """How many input rows ``layer`` sees per sample (tokens, for a transformer), from one forward pass of ``x``."""
    seen: list[int] = []
    handle = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].numel() // inp[0].shape[-1]))
    model(x)
    handle.remove()
    return seen[0] // x.shape[0]


@torch.no_grad()
def layer_rows(shapes: list[tuple[str, int, int]], tokens: int, batches: list[int]) -> list[dict[str, Any]]:
    """Dense against semi-structured ``F.linear`` for each weight shape, with ``batch x tokens`` input rows."""
    from torch.sparse import to_sparse_semi_structured

    out = []
    generator = torch.Generator(device="cuda").manual_seed(0)
    for name, m, n in shapes:
        weight = torch.randn(m, n, device="cuda", dtype=torch.float16, generator=generator)
        dense = weight * nm_mask(weight.float(), 2, 4).to(weight.device)  # the masks rlprune.sparsify makes
        sparse = to_sparse_semi_structured(dense)
        for b in batches:
            x = torch.randn(b * tokens, n, device="cuda", dtype=torch.float16, generator=generator)
            err = (F.linear(x, sparse) - F.linear(x, dense)).abs().max().item()
            d_ms = gpu_ms(lambda x=x, w=dense: F.linear(x, w))
            s_ms = gpu_ms(lambda x=x, w=sparse: F.linear(x, w))
            out.append(
                {
                    "layer": name,
                    "shape": [m, n],
                    "rows": b * tokens,
                    "dense_ms": d_ms,
                    "sparse_ms": s_ms,
                    "speedup": d_ms / s_ms,
                    "max_abs_error": err,
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="zoo/vit_cifar10.json")
    ap.add_argument("--batch", type=int, action="append", help="batch sizes to time (repeat; default 64 256 1024)")
    ap.add_argument("--data-root", default=None, help="the dataset copy (default: $RLPRUNE_DATA; never downloaded)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.batch = args.batch or [64, 256, 1024]
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        sys.exit("sparse24_gpu: needs a CUDA GPU of compute capability 8.0 or newer (2:4 sparse tensor cores)")
    backend = use_available_backend()
    torch.manual_seed(0)
    dense, meta = load_checkpoint(
        ROOT / args.checkpoint if not Path(args.checkpoint).is_absolute() else args.checkpoint
    )
    splits = splits_from_meta(meta, args.data_root, download=False)
    rows, cols = min_shape()
    take, skip = eligible_linears(dense, rows, cols)
    if not take:
        sys.exit(f"sparse24_gpu: no Linear weight of {args.checkpoint} is a multiple of {rows}x{cols}; nothing to run")
    sparse = copy.deepcopy(dense)
    masks = sparsify(sparse, pattern="2:4", layers=take)
    kept = sum(int(m.sum()) for m in masks.masks.values()) / sum(m.numel() for m in masks.masks.values())
    dense, sparse = dense.half().cuda().eval(), sparse.half().cuda().eval()
    acc = {
        "dense": accuracy(dense, splits.test, splits.mean, splits.std, 500),
        "2:4": accuracy(sparse, splits.test, splits.mean, splits.std, 500),
    }
    kernels = copy.deepcopy(sparse)
    try:
        to_semi_structured(kernels, take)
    except RuntimeError as exc:  # a kernel library this build or GPU lacks
        sys.exit(f"sparse24_gpu: the {backend} semi-structured kernels refused the weights: {str(exc).splitlines()[0]}")
    acc["2:4 semi-structured"] = accuracy(kernels, splits.test, splits.mean, splits.std, 500)
    x0 = torch.randn(8, splits.in_channels, splits.input_size, splits.input_size, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        agree = (kernels(x0) - sparse(x0)).abs().max().item()
    model_rows = []
    for b in args.batch:
        x = torch.randn(b, splits.in_channels, splits.input_size, splits.input_size, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            d_ms = gpu_ms(lambda x=x: dense(x))
            m_ms = gpu_ms(lambda x=x: sparse(x))
            s_ms = gpu_ms(lambda x=x: kernels(x))
        model_rows.append(
            {
                "batch": b,
                "dense_ms": d_ms,
                "masked_dense_kernels_ms": m_ms,
                "semi_structured_ms": s_ms,
                "speedup": d_ms / s_ms,
            }
        )
    modules = dict(dense.named_modules())
    tokens = rows_per_sample(dense, modules[take[0]], x0[:1])
    shapes = [(n, *modules[n].weight.shape) for n in take]
    unique = list({(m, n): (name, m, n) for name, m, n in shapes}.values())
    layers = layer_rows(unique + list(REFERENCE_SHAPES), tokens, args.batch)
    env = environment()
    data = {
        "checkpoint": args.checkpoint,
        "gpu": torch.cuda.get_device_name(),
        "backend": backend,
        "min_shape": [rows, cols],
        "eligible": take,
        "left_dense": skip,
        "nonzero_fraction_of_eligible": kept,
        "accuracy": acc,
        "max_abs_difference_kernels_vs_masked": agree,
        "model": model_rows,
        "layers": layers,
        "environment": env,
    }
    md = [
        f"# 2:4 semi-structured sparsity on {data['gpu']} — {args.checkpoint}",
        "",
        f"{len(take)} of {len(take) + len(skip)} Linear layers 2:4 (weights at least and a multiple of {rows}x{cols} "
        f"in fp16); left dense: {', '.join(skip) or 'none'}; every convolution stays dense. Test accuracy in fp16, no "
        f"fine-tune: dense {acc['dense']:.2f}%, 2:4 {acc['2:4']:.2f}% (in {backend} kernels: "
        f"{acc['2:4 semi-structured']:.2f}%; outputs agree with the masked dense model to {agree:.2g}). The whole "
        "model is small (128-wide layers): its timings include the per-call overhead of the sparse tensor subclass, "
        "which the single-layer rows at ViT-B/16 shapes show without.",
        "",
        md_table(
            ["batch", "dense ms", "2:4 in dense kernels ms", "2:4 semi-structured ms", "speedup"],
            [
                [r["batch"], r["dense_ms"], r["masked_dense_kernels_ms"], r["semi_structured_ms"], r["speedup"]]
                for r in model_rows
            ],
        ),
        "",
        f"Single layers, input rows = batch x {tokens} tokens:",
        "",
        md_table(
            ["layer", "weight", "rows", "dense ms", "2:4 ms", "speedup"],
            [
                [r["layer"], "x".join(map(str, r["shape"])), r["rows"], r["dense_ms"], r["sparse_ms"], r["speedup"]]
                for r in layers
            ],
        ),
        "",
        f"torch {env['torch']}, commit {env['commit']}. Reproduce: "
        f"`{reproduce_command('benchmarks/sparse24_gpu.py', args, ROOT)}`.",
    ]
    write_results(args.out, data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
