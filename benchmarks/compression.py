"""Compression table for the zoo ResNet-20: channel plans, int8, unstructured and 2:4 sparsity, per-class metrics,
size and CPU latency in the deployment runtime (ONNX Runtime), every row fine-tuned with the same recipe.

    python benchmarks/compression.py [--epochs 15] [--threads 2]      # the full table (hours on a 2-core CPU)
    python benchmarks/compression.py --smoke                           # a check that every row runs (minutes)

Rows: dense fp32 / int8; the PPO plan at 0.5 MACs (benchmarks/results/search_resnet20_macs50_plans/ppo-s0.json, the best
PPO seed by validation proxy on the current zoo model) fp32 /
int8; a uniform plan at 0.5 MACs with channels rounded to 8 (the latency-friendlier plan) fp32 / int8; unstructured
magnitude sparsity at 50% and 80% of every conv/linear weight; 2:4. Columns: test top-1, macro-F1, worst-class
accuracy and its drop against dense fp32, stored file size (int8: the .onnx; sparse: values + 1-bit mask), ONNX
Runtime latency ratio at batch 1 and 64 against dense fp32 in the same runtime. Fine-tune: SGD + cosine with
distillation from the dense model (rlprune.finetune), masks kept for sparse rows; int8 rows quantize the fine-tuned
fp32 row with 16 calibration batches from the train split.

``--smoke`` fine-tunes on 1,024 training images for one epoch and tests on 1,000 images: its accuracies say nothing
about the methods and the Markdown says so. Writes benchmarks/results/compression[_smoke].{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import md_table, reproduce_command, write_results
from safetensors.torch import save_file

from rlprune.checkpoint import load_checkpoint
from rlprune.data import BatchLoader, splits_from_meta, stratified_split
from rlprune.evaluation.classes import class_chart, evaluate_classes, worst_class_drop
from rlprune.export import export_onnx
from rlprune.pruning import Plan, analyze, prune
from rlprune.pruning.budget import uniform_plan
from rlprune.pruning.sparsity import save_sparse, sparsify
from rlprune.quantize import OnnxModel, quantize_onnx
from rlprune.training.loop import finetune

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "compression"
PPO_PLAN = ROOT / "benchmarks" / "results" / "search_resnet20_macs50_plans" / "ppo-s0.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="zoo/resnet20_cifar10.json")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--test-images", type=int, default=None, help="stratified test subset (default: all)")
    ap.add_argument("--train-images", type=int, default=None, help="stratified train subset (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 1,024 train images, 1,000 test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.smoke:
        args.epochs, args.train_images, args.test_images, args.repeats = 1, 1024, 1000, 5
    out = Path(args.out) if args.out else OUT.with_name(OUT.name + ("_smoke" if args.smoke else ""))
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    dense, meta = load_checkpoint(args.checkpoint)
    dense.eval()
    splits = splits_from_meta(meta)
    train, test = splits.train, splits.test
    if args.train_images:
        train = train.subset(stratified_split(train.labels, args.train_images, args.seed)[1])
    if args.test_images:
        test = test.subset(stratified_split(test.labels, args.test_images, args.seed)[1])
    shape = (splits.in_channels, splits.input_size, splits.input_size)
    example = torch.zeros(1, *shape)
    calib_loader = BatchLoader(splits.train, 32, splits.mean, splits.std, shuffle=True, seed=args.seed + 1)
    calib = [x for _, (x, _) in zip(range(16), calib_loader, strict=False)]

    def tune(model: torch.nn.Module, masks=None) -> float:
        loader = BatchLoader(
            train, args.batch_size, splits.mean, splits.std, shuffle=True, augment=True, drop_last=True, seed=args.seed
        )
        if masks is not None:
            masks.attach(model)
        start = time.perf_counter()
        finetune(model, loader, epochs=args.epochs, lr=args.lr, teacher=dense, seed=args.seed)
        if masks is not None:
            masks.detach()
            masks.apply(model)
        return time.perf_counter() - start

    structure = analyze(dense, example)
    variants: dict[str, dict] = {"dense": {"model": copy.deepcopy(dense), "tune": False}}
    ppo = Plan.load(PPO_PLAN, structure)
    variants["ppo_macs50"] = {"model": prune(dense, ppo, example)[0], "tune": True}
    uni = uniform_plan(structure, 0.5, round_to=8)
    variants["uniform_macs50_r8"] = {"model": prune(dense, uni, example)[0], "tune": True}
    for name, kw in (("unstructured50", {"sparsity": 0.5}), ("unstructured80", {"sparsity": 0.8}), ("nm2to4", {})):
        model = copy.deepcopy(dense)
        masks = sparsify(model, **kw) if kw else sparsify(model, pattern="2:4")
        variants[name] = {"model": model, "tune": True, "masks": masks}

    rows: dict[str, dict] = {}
    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, v in variants.items():
            model = v["model"]
            seconds = tune(model, v.get("masks")) if v["tune"] else 0.0
            model.eval()
            fp32 = Path(tmp) / f"{name}.onnx"
            export_onnx(model, shape, fp32)
            if "masks" in v:
                stored = save_sparse(model, v["masks"], Path(tmp) / f"{name}.sparse.safetensors").stat().st_size
            else:
                st = Path(tmp) / f"{name}.safetensors"
                save_file({k: t.contiguous() for k, t in model.state_dict().items()}, str(st))
                stored = st.stat().st_size
            entries = [(name, fp32, stored, "fp32")]
            if "masks" not in v:
                int8 = Path(tmp) / f"{name}.int8.onnx"
                quantize_onnx(fp32, int8, calib, shape)
                entries.append((f"{name}_int8", int8, int8.stat().st_size, "int8"))
            for row, path, size, precision in entries:
                session = OnnxModel(path, threads=args.threads)
                rep = evaluate_classes(session, test, splits.mean, splits.std)
                reports[row] = rep
                rows[row] = {
                    "precision": precision,
                    "accuracy": rep["accuracy"],
                    "macro_f1": rep["macro_f1"],
                    "worst_class": rep["worst_class"],
                    "worst_class_accuracy": rep["worst_class_accuracy"],
                    "stored_mb": size / 1e6,
                    "latency_ms": {str(bs): session.latency(shape, bs, repeats=args.repeats) for bs in (1, 64)},
                    "finetune_seconds": seconds,
                    "per_class": rep["per_class"],
                }
                print(row, {k: rows[row][k] for k in ("accuracy", "macro_f1", "stored_mb", "latency_ms")}, flush=True)

    base = rows["dense"]
    for row, r in rows.items():
        r.update(worst_class_drop(reports[row], reports["dense"]))
        for bs in ("1", "64"):
            r[f"latency_ratio_b{bs}"] = r["latency_ms"][bs] / base["latency_ms"][bs]
    chart = out.with_name(out.name + "_classes.png")
    class_chart({k: reports[k] for k in ("dense", "ppo_macs50", "ppo_macs50_int8")}, chart, title=out.name)
    table = [
        [
            row,
            r["accuracy"],
            r["macro_f1"],
            r["worst_class_accuracy"],
            r["worst_class_drop"],
            r["stored_mb"],
            r["latency_ratio_b1"],
            r["latency_ratio_b64"],
        ]
        for row, r in rows.items()
    ]
    assert all(np.isfinite(v) for line in table for v in line[1:])
    label = (
        "**SMOKE RUN: 1 fine-tune epoch on 1,024 images, 1,000 test images. The accuracies say nothing about the "
        "methods; only the sizes and latency ratios are meaningful.**\n\n"
        if args.smoke
        else ""
    )
    md = (
        f"# Compression — ResNet-20 ({args.checkpoint})\n\n{label}"
        f"Fine-tune: {args.epochs} epoch(s), lr {args.lr}, distillation from dense, on {len(train)} train images; "
        f"test on {len(test)} images. Latency: ONNX Runtime, {args.threads} threads, median of {args.repeats}, ratio "
        "to dense fp32. Stored size: safetensors (fp32), .onnx (int8), values + 1-bit mask (sparse rows; ONNX "
        "Runtime runs them as dense models, so their latency equals dense).\n\n"
        + md_table(
            ["model", "top-1", "macro-F1", "worst class", "worst drop", "MB", "lat b1", "lat b64"],
            table,
        )
        + f"\n\nPer-class accuracy chart: `{chart.name}`.\n\nReproduce: "
        f"`{reproduce_command('benchmarks/compression.py', args, ROOT)}`\n"
    )
    write_results(out, {"rows": rows, "args": vars(args), "smoke": args.smoke}, md)
    print(md)


if __name__ == "__main__":
    main()
