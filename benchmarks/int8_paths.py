"""Which post-training int8 path to ship: ONNX Runtime ``quantize_static`` on the exported model, or PyTorch's PT2E
x86 path (torchao's ``X86InductorQuantizer`` + ``torch.compile``), on the zoo ResNet-20.

    python benchmarks/int8_paths.py [--checkpoint zoo/resnet20_cifar10.json] [--val-images 2000] [--threads 2]

Both paths calibrate on the same train-split batches. Measured: top-1 / macro-F1 on a stratified validation subset,
median latency at batch 1 and 64 in each path's own deployment runtime (ONNX Runtime session; compiled PyTorch
module), and file size. Writes benchmarks/results/int8_paths.{json,md}. Holds the torch lock ~3-6 min on 2 cores
(most of it Inductor compiling the PT2E model).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _results import md_table, reproduce_command, write_results

from rlprune.data import BatchLoader, splits_from_meta, stratified_split
from rlprune.deploy.int8 import OnnxModel, quantize_onnx
from rlprune.deploy.onnx import export_onnx
from rlprune.evaluation.classes import class_report, confusion_matrix
from rlprune.io.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "int8_paths"


def torch_latency(model: torch.nn.Module, shape: tuple[int, ...], bs: int, repeats: int) -> float:
    x = torch.randn(bs, *shape)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


class _ReLU(torch.nn.Module):
    """A functional ReLU: PT2E's x86 quantizer groups calls by module, and ResNet blocks call one ``nn.ReLU`` twice,
    which it rejects ("Input partition has more than one output node")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu(x)


def unshare_relus(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, _ReLU())
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="zoo/resnet20_cifar10.json")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--calib-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    splits = splits_from_meta(meta)
    _, idx = stratified_split(splits.val.labels, args.val_images, args.seed)
    val = splits.val.subset(idx)
    shape = (splits.in_channels, splits.input_size, splits.input_size)
    loader = BatchLoader(splits.train, args.calib_batch_size, splits.mean, splits.std, shuffle=True, seed=args.seed)
    calib = [x for _, (x, _) in zip(range(args.calib_batches), loader, strict=False)]

    rows: dict[str, dict] = {}

    def record(name: str, predictor, size: int, lat: dict[int, float], runtime: str, extra: dict | None = None):
        rep = class_report(confusion_matrix(predictor, val, splits.mean, splits.std), splits.classes)
        rows[name] = {
            "runtime": runtime,
            "accuracy": rep["accuracy"],
            "macro_f1": rep["macro_f1"],
            "worst_class_accuracy": rep["worst_class_accuracy"],
            "file_mb": size / 1e6,
            "latency_ms": {str(k): v for k, v in lat.items()},
            **(extra or {}),
        }
        print(name, rows[name], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        # ---- ONNX Runtime: fp32 and int8 in the same runtime
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, shape, fp32)
        int8 = Path(tmp) / "int8.onnx"
        t0 = time.perf_counter()
        quantize_onnx(fp32, int8, calib, shape, max_batches=args.calib_batches)
        q_seconds = time.perf_counter() - t0
        for name, path in (("ort_fp32", fp32), ("ort_int8", int8)):
            sess = OnnxModel(path, threads=args.threads)
            lat = {bs: sess.latency(shape, bs, repeats=args.repeats) for bs in (1, 64)}
            extra = {"quantize_seconds": q_seconds} if name == "ort_int8" else None
            record(name, sess, path.stat().st_size, lat, "onnxruntime", extra)

        # ---- PyTorch: eager fp32, then PT2E x86 int8 compiled with Inductor
        sd = Path(tmp) / "fp32.pt"
        torch.save(model.state_dict(), sd)
        lat = {bs: torch_latency(model, shape, bs, args.repeats) for bs in (1, 64)}
        record("torch_fp32_eager", model, sd.stat().st_size, lat, "torch eager")
        try:
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError as exc:
            raise SystemExit(f"PT2E path needs torchao: {exc}") from exc
        try:
            t0 = time.perf_counter()
            example = (torch.randn(2, *shape),)
            dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
            exported = torch.export.export(unshare_relus(model), example, dynamic_shapes=dyn).module()
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)
            with torch.no_grad():
                for x in calib:
                    prepared(x)
            converted = convert_pt2e(prepared)
            q_seconds = time.perf_counter() - t0
            pt2 = Path(tmp) / "int8.pt2"
            torch.export.save(torch.export.export(converted, example, dynamic_shapes=dyn), str(pt2))
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True  # the x86 int8 kernels need weights frozen into the graph (PT2E tutorial)
            t0 = time.perf_counter()
            with torch.no_grad():
                compiled = torch.compile(converted)
                for bs in (1, 64):
                    compiled(torch.randn(bs, *shape))
            compile_seconds = time.perf_counter() - t0
            lat = {bs: torch_latency(compiled, shape, bs, args.repeats) for bs in (1, 64)}
            record(
                "pt2e_int8_inductor",
                lambda x: compiled(x),  # an exported/compiled program refuses .eval(); it is already in eval mode
                pt2.stat().st_size,
                lat,
                "torch.compile (inductor)",
                {"quantize_seconds": q_seconds, "compile_seconds": compile_seconds},
            )

        except Exception as exc:  # record why the path failed instead of losing the other rows
            rows["pt2e_int8_inductor"] = {
                "runtime": "torch.compile (inductor)",
                "error": f"{type(exc).__name__}: {exc}",
            }
            print("PT2E failed:", exc, flush=True)

    base = {"onnxruntime": rows["ort_fp32"], "torch": rows["torch_fp32_eager"]}
    table = []
    failed = {name: r["error"] for name, r in rows.items() if "error" in r}
    for name, r in rows.items():
        if "error" in r:
            continue
        ref = base["onnxruntime"] if r["runtime"] == "onnxruntime" else base["torch"]
        table.append(
            [
                name,
                r["runtime"],
                r["accuracy"],
                r["macro_f1"],
                r["worst_class_accuracy"],
                r["file_mb"],
                r["latency_ms"]["1"],
                r["latency_ms"]["64"],
                r["latency_ms"]["1"] / ref["latency_ms"]["1"],
                r["latency_ms"]["64"] / ref["latency_ms"]["64"],
            ]
        )
    md = (
        f"# int8 paths: ONNX Runtime static vs PT2E x86 ({args.checkpoint})\n\n"
        f"Validation subset of {args.val_images} images (stratified, seed {args.seed}); calibration "
        f"{args.calib_batches} x {args.calib_batch_size} train images; {args.threads} threads; latency = median of "
        f"{args.repeats} runs, ratio against fp32 in the same runtime (ORT fp32 for ORT rows, torch eager fp32 for "
        "torch rows).\n\n"
        + md_table(
            ["model", "runtime", "top-1", "macro-F1", "worst class", "MB", "ms b1", "ms b64", "ratio b1", "ratio b64"],
            table,
        )
        + "".join(f"\n\n**{name} failed**: `{err}`" for name, err in failed.items())
        + f"\n\nReproduce: `{reproduce_command('benchmarks/int8_paths.py', args, ROOT)}`\n"
    )
    write_results(args.out, {"rows": rows, "args": vars(args)}, md)
    print(md)


if __name__ == "__main__":
    main()
