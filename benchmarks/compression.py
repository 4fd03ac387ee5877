"""Compression table for the zoo ResNet-20: channel plans, int8, unstructured and 2:4 sparsity, iterative rounds,
per-class metrics, size and CPU latency in the deployment runtime (ONNX Runtime), every row fine-tuned with the same
recipe.

    python benchmarks/compression.py [--epochs 15] [--threads 2]      # the full table (hours on a 2-core CPU)
    python benchmarks/compression.py --smoke                           # a check that every row runs (minutes)

Rows: dense fp32 / int8; the PPO plan at 0.5 MACs (benchmarks/results/search_resnet20_macs50_plans/ppo-s0.json, the
best PPO seed by validation proxy on the current zoo model) fp32 / int8; the latency-aware plan at 0.5 MACs
(ort64-s0.json beside it: experiments/resnet20_cifar10_macs50_ort64.yaml, a search whose reward charges the batch-64
latency timed in ONNX Runtime) fp32 / int8; unstructured magnitude sparsity at 50% and 80% of every conv/linear
weight; 2:4; the generalist policy's plan at 0.5 MACs one-shot and in ``--rounds`` (0.8 -> 0.64 -> 0.5 of the dense
MACs, each round's plan rolled out on the model the round starts from), the fine-tune epochs split over the rounds so
both rows train equally long; a uniform plan at 0.5 MACs with channels rounded to 8, fp32 / int8; last, the PPO
plan's profile with channel counts rounded to multiples of 16 (the AVX-512 vector width, which ONNX Runtime's fp32
kernels block channels by), rescaled to 0.5 MACs, fp32 / int8. Columns: test
top-1, macro-F1, worst-class accuracy and its drop against dense fp32, stored file size (int8: the .onnx; sparse:
values + 1-bit mask), ONNX Runtime latency ratio at batch 1 and 64 against dense fp32 timed in the same process.
Fine-tune: SGD + cosine with distillation from the dense model (rlprune.finetune), masks kept for sparse rows; int8
rows quantize the fine-tuned fp32 row with 16 calibration batches from the train split.

Each unit (a row and its int8 twin) is written to the results file as soon as it is measured, and a unit the
results file (as committed) already holds for the same request (dense weights, recipe, timing settings, plan or
policy) is not measured again: the table fills up over several sessions, and the Markdown names the commits its rows
come from. ``--only NAME`` measures just those units (the others stay as stored).

``--smoke`` fine-tunes on 1,024 training images for one epoch and tests on 1,000 images: its accuracies say nothing
about the methods and the Markdown says so. Writes benchmarks/results/compression[_smoke].{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import md_table, reproduce_command, request_key, write_results
from safetensors.torch import save_file

from rlprune.agents.policy_io import load_policy
from rlprune.cost.budget import scale_to_budget, uniform_plan
from rlprune.cost.latency import time_interleaved
from rlprune.cost.macs import count_macs
from rlprune.data import BatchLoader, splits_from_meta, stratified_split
from rlprune.deploy.int8 import OnnxModel, quantize_onnx
from rlprune.deploy.onnx import export_onnx
from rlprune.evaluation.classes import class_chart, evaluate_classes, worst_class_drop
from rlprune.io.checkpoint import load_checkpoint
from rlprune.io.provenance import provenance, tensors_sha256
from rlprune.jobs.apply import policy_plans
from rlprune.pruning import Plan, analyze, prune
from rlprune.pruning.sparsity import SparsityMasks, save_sparse, sparsify
from rlprune.training.loop import finetune

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "compression"
PLANS = ROOT / "benchmarks" / "results" / "search_resnet20_macs50_plans"
POLICY = ROOT / "benchmarks" / "results" / "policies" / "generalist_macs" / "policy.json"
Built = tuple[torch.nn.Module, SparsityMasks | None, float]


def _interleaved(a: OnnxModel, b: OnnxModel, shape: tuple[int, ...], batch: int, repeats: int) -> tuple[float, float]:
    """Median ms per call of two sessions timed in alternating rounds, so both see the same machine state."""
    runs = {str(i): (lambda x, s=s: s.session.run(None, {s.input_name: x.numpy()})) for i, s in enumerate((a, b))}
    timed = time_interleaved(runs, torch.randn(batch, *shape), repeats=repeats)
    return timed["0"], timed["1"]


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
    ap.add_argument("--policy", default=str(POLICY.relative_to(ROOT)), help="policy of the one-shot/rounds rows")
    ap.add_argument("--rounds", type=float, action="append", help="MACs target per round (default 0.8 0.64 0.5)")
    ap.add_argument("--only", action="append", help="measure only this unit (repeat; default: all)")
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 1,024 train images, 1,000 test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.rounds = args.rounds or [0.8, 0.64, 0.5]
    if args.smoke:
        args.epochs, args.train_images, args.test_images, args.repeats = max(1, len(args.rounds)), 1024, 1000, 5
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
    structure = analyze(dense, example)
    dense_macs = count_macs(dense, shape)

    def tune(model: torch.nn.Module, masks: SparsityMasks | None = None, epochs: int | None = None) -> float:
        loader = BatchLoader(
            train, args.batch_size, splits.mean, splits.std, shuffle=True, augment=True, drop_last=True, seed=args.seed
        )
        if masks is not None:
            masks.attach(model)
        start = time.perf_counter()
        finetune(model, loader, epochs=epochs or args.epochs, lr=args.lr, teacher=dense, seed=args.seed)
        if masks is not None:
            masks.detach()
            masks.apply(model)
        return time.perf_counter() - start

    def channel(plan: Plan) -> Callable[[], Built]:
        def build() -> Built:
            model = prune(dense, plan, example)[0]
            return model, None, tune(model)

        return build

    def sparse(**kw: Any) -> Callable[[], Built]:
        def build() -> Built:
            model = copy.deepcopy(dense)
            masks = sparsify(model, **kw)
            return model, masks, tune(model, masks)

        return build

    def rounds() -> Built:
        """The policy's plan in rounds, each round's target relative to the model it starts from, the epochs split
        evenly over the rounds (the same total training as the one-shot row)."""
        n = len(args.rounds)
        per_round = [args.epochs // n + (k < args.epochs % n) for k in range(n)]
        model, seconds = dense, 0.0
        for target, epochs in zip(args.rounds, per_round, strict=True):
            current = analyze(model.eval(), example)
            plan = policy_plans(policy, model, current, target=target * structure.total_macs / current.total_macs)[0]
            model = prune(model, plan, example)[0]
            seconds += tune(model, epochs=epochs) if epochs else 0.0
        return model, None, seconds

    policy = load_policy(args.policy)
    policy_key = request_key(policy.meta)
    ppo = Plan.load(PLANS / "ppo-s0.json", structure)
    fast = Plan.load(PLANS / "ort64-s0.json", structure)
    uni = uniform_plan(structure, 0.5, round_to=8)
    # the PPO plan's shape with channel counts in multiples of 16 (the AVX-512 vector width: round_to auto there),
    # rescaled to the same MACs
    ppo_wide = scale_to_budget(structure, [max(ppo.ratios[u.name], 1e-3) for u in structure.units], 0.5, round_to=16)
    oneshot = policy_plans(policy, dense, structure, target=args.rounds[-1])[0]
    units: dict[str, tuple[Callable[[], Built], dict[str, Any]]] = {
        "dense": (lambda: (copy.deepcopy(dense), None, 0.0), {}),
        "ppo_macs50": (channel(ppo), {"plan": ppo.key()}),
        "latency_aware_macs50": (channel(fast), {"plan": fast.key()}),
        "unstructured50": (sparse(sparsity=0.5), {}),
        "unstructured80": (sparse(sparsity=0.8), {}),
        "nm2to4": (sparse(pattern="2:4"), {}),
        "generalist_oneshot": (channel(oneshot), {"plan": oneshot.key()}),
        f"generalist_{len(args.rounds)}rounds": (rounds, {"policy": policy_key, "rounds": args.rounds}),
        "uniform_macs50_r8": (channel(uni), {"plan": uni.key()}),
        "ppo_macs50_r16": (channel(ppo_wide), {"plan": ppo_wide.key()}),
    }
    unknown = sorted(set(args.only or ()) - set(units))
    if unknown:
        raise SystemExit(f"--only: no unit named {unknown[0]} (units: {', '.join(units)})")
    # everything that decides a unit's numbers (latency too: threads and repeats)
    settings = ("epochs", "lr", "batch_size", "train_images", "test_images", "seed", "threads", "repeats")
    recipe = {k: getattr(args, k) for k in settings}
    dense_sha = meta.get("weights_sha256") or tensors_sha256(dense)
    results = out.with_suffix(".json")
    committed = json.loads(results.read_text()).get("units", {}) if results.is_file() else {}
    measured: dict[str, dict[str, Any]] = {}

    def measure(name: str, model: torch.nn.Module, masks: SparsityMasks | None, seconds: float) -> dict[str, Any]:
        """The unit's rows (fp32, and int8 for a model stored dense): accuracy, per-class report, stored size and
        latency ratios against dense fp32 timed here, in the same process and runtime."""
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            dense_onnx = Path(tmp) / "dense_reference.onnx"
            export_onnx(dense, shape, dense_onnx)
            reference = OnnxModel(dense_onnx, threads=args.threads)
            fp32 = Path(tmp) / f"{name}.onnx"
            export_onnx(model, shape, fp32)
            if masks is not None:
                stored = save_sparse(model, masks, Path(tmp) / f"{name}.sparse.safetensors").stat().st_size
            else:
                st = Path(tmp) / f"{name}.safetensors"
                save_file({k: t.contiguous() for k, t in model.state_dict().items()}, str(st))
                stored = st.stat().st_size
            entries = [(name, fp32, stored, "fp32")]
            if masks is None:
                int8 = Path(tmp) / f"{name}.int8.onnx"
                quantize_onnx(fp32, int8, calib, shape)
                entries.append((f"{name}_int8", int8, int8.stat().st_size, "int8"))
            macs = count_macs(model, shape) / dense_macs
            for row, path, size, precision in entries:
                session = OnnxModel(path, threads=args.threads)
                rep = evaluate_classes(session, test, splits.mean, splits.std)
                latency, ratio = {}, {}
                for bs in (1, 64):
                    if row == "dense":  # the reference itself: 1 by definition (timing it twice measures noise)
                        latency[str(bs)] = _interleaved(reference, reference, shape, bs, args.repeats)[0]
                        ratio[f"latency_ratio_b{bs}"] = 1.0
                        continue
                    base, latency[str(bs)] = _interleaved(reference, session, shape, bs, args.repeats)
                    ratio[f"latency_ratio_b{bs}"] = latency[str(bs)] / base
                rows[row] = {
                    "macs_ratio": macs,
                    "precision": precision,
                    "accuracy": rep["accuracy"],
                    "macro_f1": rep["macro_f1"],
                    "worst_class": rep["worst_class"],
                    "worst_class_accuracy": rep["worst_class_accuracy"],
                    "stored_mb": size / 1e6,
                    "latency_ms": latency,
                    **ratio,
                    "finetune_seconds": seconds,
                    "classes": rep,
                }
                print(row, {k: rows[row][k] for k in ("accuracy", "macro_f1", "stored_mb", "latency_ms")}, flush=True)
        return rows

    for name, (build, extra) in units.items():
        request = {"unit": name, "dense": dense_sha, **recipe, **extra}
        old = committed.get(name)
        if old is not None and old.get("request_key") == request_key(request):  # measured in an earlier session
            measured[name] = old
        elif not args.only or name in args.only:
            model, masks, seconds = build()
            model.eval()
            rows = measure(name, model, masks, seconds)
            key = request_key(request)
            measured[name] = {"request_key": key, "request": request, "provenance": provenance(request)}
            measured[name]["rows"] = rows
        if name in measured:
            _write(args, out, units, measured)
    if not measured:
        raise SystemExit("nothing measured: --only names no unit that is still to be measured")
    print(out.with_suffix(".md").read_text())


def _write(args: argparse.Namespace, out: Path, units: dict[str, Any], measured: dict[str, Any]) -> None:
    """The results so far (worst-class drops once the dense row is measured)."""
    dense = measured["dense"]["rows"]["dense"]["classes"] if "dense" in measured else None
    rows: dict[str, dict[str, Any]] = {}
    for unit in measured.values():
        for row, r in unit["rows"].items():
            rows[row] = {**r, **(worst_class_drop(r["classes"], dense) if dense else {"worst_class_drop": ""})}
    table = [
        [
            row,
            r["macs_ratio"],
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
    assert all(np.isfinite(v) for line in table for v in line[1:] if v != "")  # "": no dense row to compare yet
    chart = out.with_name(out.name + "_classes.png")
    drawn = [k for k in ("dense", "ppo_macs50", "latency_aware_macs50", "ppo_macs50_int8") if k in rows]
    class_chart({k: rows[k]["classes"] for k in drawn}, chart, title=out.name)
    pending = [name for name in units if name not in measured]
    label = (
        "**SMOKE RUN: 1 fine-tune epoch per round on 1,024 images, 1,000 test images. The accuracies say nothing "
        "about the methods; only the sizes and latency ratios are meaningful.**\n\n"
        if args.smoke
        else ""
    )
    md = (
        f"# Compression — ResNet-20 ({args.checkpoint})\n\n{label}"
        f"Fine-tune: {args.epochs} epoch(s), lr {args.lr}, distillation from dense"
        + (f", on {args.train_images} train images; test on {args.test_images} images" if args.smoke else "")
        + f". Rounds: MACs {' -> '.join(f'{t:g}' for t in args.rounds)}, the epochs split over the rounds. MACs: "
        "measured on the model, against dense (sparse rows still compute their zeros on CPU). "
        f"Latency: ONNX Runtime, {args.threads} threads, median of {args.repeats}, ratio to dense fp32 timed in the "
        "same process. Stored size: safetensors (fp32), .onnx (int8), values + 1-bit mask (sparse rows; ONNX Runtime "
        "runs them as dense models, so their latency equals dense).\n\n"
        + md_table(
            ["model", "MACs", "top-1", "macro-F1", "worst class", "worst drop", "MB", "lat b1", "lat b64"], table
        )
        + (f"\n\n**Not yet measured**: {', '.join(pending)}." if pending else "")
        + f"\n\nPer-class accuracy chart: `{chart.name}`.\n\nReproduce: "
        f"`{reproduce_command('benchmarks/compression.py', args, ROOT, skip=('out', 'only'))}`\n"
    )
    write_results(out, {"units": measured, "pending": pending, "args": vars(args), "smoke": args.smoke}, md)


if __name__ == "__main__":
    main()
