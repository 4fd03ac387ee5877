"""Does unstructured / 2:4 magnitude sparsity make the zoo ResNet-20 faster on CPU, or only smaller?

    python benchmarks/sparsity_cpu.py [--checkpoint zoo/resnet20_cifar10.json] [--threads 2]

For dense and 50% / 80% unstructured and 2:4 sparsity (no fine-tune: this measures size and speed, the accuracy
column only shows the cost before any recovery): stored size (dense safetensors vs non-zero values + 1-bit mask),
median latency at batch 1 and 64 in PyTorch eager and ONNX Runtime, and top-1 on a stratified validation subset.
Writes benchmarks/results/sparsity_cpu.{json,md}; holds the torch lock about a minute.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from _results import md_table, reproduce_command, write_results
from safetensors.torch import save_file

from rlprune.cost.latency import compare_latency
from rlprune.data import splits_from_meta, stratified_split
from rlprune.deploy.int8 import OnnxModel
from rlprune.deploy.onnx import export_onnx
from rlprune.evaluation import evaluate
from rlprune.io.checkpoint import load_checkpoint
from rlprune.pruning.sparsity import save_sparse, sparsify

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sparsity_cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="zoo/resnet20_cifar10.json")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    dense, meta = load_checkpoint(args.checkpoint)
    dense.eval()
    splits = splits_from_meta(meta)
    val = splits.val.subset(stratified_split(splits.val.labels, args.val_images, args.seed)[1])
    shape = (splits.in_channels, splits.input_size, splits.input_size)

    models, masks = {"dense": dense}, {}
    for name, kw in (("unstructured50", {"sparsity": 0.5}), ("unstructured80", {"sparsity": 0.8})):
        models[name] = copy.deepcopy(dense)
        masks[name] = sparsify(models[name], **kw)
    models["nm2to4"] = copy.deepcopy(dense)
    masks["nm2to4"] = sparsify(models["nm2to4"], pattern="2:4")
    eager = compare_latency(models, shape, (1, 64), threads=args.threads, repeats=args.repeats)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            if name in masks:
                size = save_sparse(model, masks[name], Path(tmp) / f"{name}.sparse").stat().st_size
                nonzero = masks[name].stats(model)["nonzero_ratio"]
            else:
                st = Path(tmp) / f"{name}.safetensors"
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
                size, nonzero = st.stat().st_size, 1.0
            onnx = Path(tmp) / f"{name}.onnx"
            export_onnx(model, shape, onnx)
            session = OnnxModel(onnx, threads=args.threads)
            rows[name] = {
                "nonzero_ratio": nonzero,
                "stored_mb": size / 1e6,
                "onnx_mb": onnx.stat().st_size / 1e6,
                "eager_ms": {str(k): v for k, v in eager[name].items()},
                "ort_ms": {str(bs): session.latency(shape, bs, repeats=args.repeats) for bs in (1, 64)},
                "val_top1_no_finetune": evaluate(model, val, splits.mean, splits.std)["accuracy"],
            }
            print(name, rows[name], flush=True)
    d = rows["dense"]
    table = [
        [
            name,
            r["nonzero_ratio"],
            r["stored_mb"],
            r["stored_mb"] / d["stored_mb"],
            r["eager_ms"]["1"] / d["eager_ms"]["1"],
            r["eager_ms"]["64"] / d["eager_ms"]["64"],
            r["ort_ms"]["1"] / d["ort_ms"]["1"],
            r["ort_ms"]["64"] / d["ort_ms"]["64"],
            r["val_top1_no_finetune"],
        ]
        for name, r in rows.items()
    ]
    md = (
        f"# Sparsity on CPU — size, not time ({args.checkpoint})\n\n"
        f"{args.threads} threads; latency ratios against dense in the same runtime (median of {args.repeats}); "
        f"top-1 on {args.val_images} validation images *without* fine-tuning.\n\n"
        + md_table(
            [
                "model",
                "non-zero",
                "stored MB",
                "size ratio",
                "eager b1",
                "eager b64",
                "ORT b1",
                "ORT b64",
                "val top-1 (no FT)",
            ],
            table,
        )
        + f"\n\nReproduce: `{reproduce_command('benchmarks/sparsity_cpu.py', args, ROOT)}`\n"
    )
    write_results(args.out, {"rows": rows, "args": vars(args)}, md)
    print(md)


if __name__ == "__main__":
    main()
