"""Post-training static int8 quantization of a (pruned) model through ONNX Runtime.

The path chosen (see docs/compression.md for the measurement against PyTorch's PT2E x86 path): export the fp32
model to ONNX, then ONNX Runtime's ``quantize_static`` with calibration batches drawn from the *train* split (never
validation or test, which report the result), QDQ format, per-channel symmetric int8 weights and uint8 activations.
The result is one ``.onnx`` file a user deploys with ``onnxruntime`` alone — the runtime the latency is measured in —
and its weights really are int8 on disk (about 4x smaller).

Example::

    info = rp.quantize_int8(pruned, (3, 32, 32), "pruned.int8.onnx", calibration=train_batches)
    int8 = rp.OnnxModel("pruned.int8.onnx")          # callable: input tensor -> logits tensor
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune.deploy.onnx import export_onnx
from rlprune.errors import RLPruneError


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RLPruneError("int8 quantization needs onnx and onnxruntime: pip install onnx onnxruntime") from exc
    return ort


class OnnxModel:
    """An ONNX Runtime session that behaves like a model for evaluation: ``model(x) -> logits`` on CPU tensors.

    :param path: the ``.onnx`` file.
    :param threads: intra-op threads (``None``: ONNX Runtime's default).
    :param spin: let idle worker threads spin-wait for the next call (ONNX Runtime's default). Off for sessions timed
        in alternation with others, whose spinning threads would otherwise slow the next one down.
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, spin: bool = True) -> None:
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise RLPruneError(f"{self.path}: ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def latency(self, input_shape: Sequence[int], batch_size: int, *, warmup: int = 3, repeats: int = 15) -> float:
        """Median milliseconds per ``run`` on a random batch (timing does not depend on the values)."""
        x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
        feed = {self.input_name: x}
        for _ in range(warmup):
            self.session.run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000.0)
        return float(statistics.median(times))


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.name = name
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.name: batch}

    def rewind(self) -> None:  # pragma: no cover - not called by quantize_static's MinMax path
        raise RLPruneError("calibration: the reader cannot be rewound")


def _calibration_arrays(calibration: Iterable[Any], max_batches: int, input_shape: Sequence[int]) -> list[np.ndarray]:
    arrays: list[np.ndarray] = []
    for batch in calibration:
        if len(arrays) >= max_batches:
            break
        x = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(x, torch.Tensor | np.ndarray):
            raise RLPruneError(f"calibration: expected tensors or (inputs, labels) batches, got {type(x).__name__}")
        array = np.ascontiguousarray(torch.as_tensor(x).detach().float().cpu().numpy())
        if tuple(array.shape[1:]) != tuple(input_shape):
            raise RLPruneError(
                f"calibration: batches of shape {tuple(array.shape[1:])}, the model takes {tuple(input_shape)}"
            )
        if not np.isfinite(array).all():
            raise RLPruneError("calibration: a batch holds non-finite values")
        arrays.append(array)
    if not arrays:
        raise RLPruneError("calibration: no batches (pass batches from the train split)")
    return arrays


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[Any],
    input_shape: Sequence[int],
    *,
    max_batches: int = 16,
    per_channel: bool = True,
) -> Path:
    """Statically quantize an exported fp32 ONNX model to int8 (QDQ) with calibration batches.

    :param calibration: batches ``x`` or ``(x, y)`` of *normalised* inputs from the train split.
    :param max_batches: calibration batches used (activation ranges are min/max over them).
    :param per_channel: per-output-channel weight scales (keeps pruned layers with uneven channel norms accurate).
    """
    _ort()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise RLPruneError(f"{fp32_path}: ONNX model not found")
    arrays = _calibration_arrays(calibration, max_batches, input_shape)
    name = OnnxModel(fp32_path).input_name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        partial = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(partial),
            _Calibration(name, arrays),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        partial.replace(out_path)  # nothing half-written at out_path
    return out_path


def quantize_int8(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | Path,
    calibration: Iterable[Any],
    *,
    max_batches: int = 16,
    per_channel: bool = True,
    check_inputs: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Export ``model`` (fp32, next to ``path`` as ``<stem>.fp32.onnx``) and write its int8 version to ``path``.

    :param calibration: normalised input batches (or ``(x, y)``) from the train split.
    :param check_inputs: inputs to compare int8 and fp32 logits on (default: the first calibration batch).
    :returns: paths, sizes in bytes and the int8-vs-fp32 agreement on ``check_inputs``: top-1 agreement (percent)
        and the largest absolute logit difference relative to the fp32 logits' range.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise RLPruneError(f"{path}: the int8 model path must end in .onnx")
    fp32_path = path.with_name(path.stem + ".fp32.onnx")
    model = model.eval().cpu()
    export_onnx(model, tuple(input_shape), fp32_path)
    batches = _calibration_arrays(calibration, max_batches, input_shape)
    quantize_onnx(fp32_path, path, batches, input_shape, max_batches=max_batches, per_channel=per_channel)
    x = check_inputs if check_inputs is not None else torch.from_numpy(batches[0])
    with torch.no_grad():
        ref = model(x.float()).float()
    got = OnnxModel(path)(x)
    spread = float(ref.max() - ref.min()) or 1.0
    info = {
        "fp32_onnx": str(fp32_path),
        "int8_onnx": str(path),
        "fp32_bytes": fp32_path.stat().st_size,
        "int8_bytes": path.stat().st_size,
        "top1_agreement": 100.0 * float((got.argmax(1) == ref.argmax(1)).float().mean()),
        "max_rel_logit_diff": float((got - ref).abs().max()) / spread,
        "calibration_batches": len(batches),
    }
    if not all(math.isfinite(float(v)) for k, v in info.items() if not isinstance(v, str)):
        raise RLPruneError(f"{path}: the quantized model produced non-finite outputs")
    return info


def int8_report(
    model: nn.Module,
    splits: Any,
    directory: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    calibration_batches: int = 16,
    calibration_batch_size: int = 32,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Quantize a fine-tuned model into ``directory/model.int8.onnx`` and measure it beside its fp32 ONNX model.

    The block a report gains under ``int8``: calibration from the train split (seeded), val/test accuracy, macro-F1
    and worst class of both, file sizes, and ONNX Runtime latency (ms) per batch size for both.

    :param splits: rlprune :class:`~rlprune.data.DataSplits` (``train`` calibrates; ``val``/``test`` are scored).
    """
    from rlprune.data import BatchLoader
    from rlprune.evaluation.classes import evaluate_classes

    mean = tuple(mean if mean is not None else splits.mean)
    std = tuple(std if std is not None else splits.std)
    shape = (splits.in_channels, splits.input_size, splits.input_size)
    loader = BatchLoader(splits.train, calibration_batch_size, mean, std, shuffle=True, seed=seed + 31)
    batches = [x for _, (x, _) in zip(range(calibration_batches), loader, strict=False)]
    directory = Path(directory)
    info = quantize_int8(model, shape, directory / "model.int8.onnx", batches, max_batches=calibration_batches)
    out: dict[str, Any] = {"files": {"fp32": info["fp32_onnx"], "int8": info["int8_onnx"]}}
    out["bytes"] = {"fp32": info["fp32_bytes"], "int8": info["int8_bytes"]}
    out["agreement"] = {k: info[k] for k in ("top1_agreement", "max_rel_logit_diff")}
    for precision in ("fp32", "int8"):
        session = OnnxModel(info[f"{precision}_onnx"], threads=threads)
        scores: dict[str, Any] = {}
        for split in ("val", "test"):
            data = getattr(splits, split, None)
            if data is not None:
                rep = evaluate_classes(session, data, mean, std)
                scores[split] = {k: rep[k] for k in ("accuracy", "macro_f1", "worst_class", "worst_class_accuracy")}
        scores["latency_ms_ort"] = {str(bs): session.latency(shape, bs) for bs in batch_sizes}
        out[precision] = scores
    out["calibration"] = {"batches": len(batches), "batch_size": calibration_batch_size, "split": "train"}
    return out
