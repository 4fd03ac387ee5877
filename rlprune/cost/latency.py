"""Measured latency: warm-up, repeated timed runs, the median, a fixed thread count, CUDA synchronisation.

Latency on small CPUs is not proportional to MACs (benchmarks/results/latency_vs_macs.md), so it is measured.
Single runs swing up to 2x on shared machines: compare models with
:func:`compare_latency`, which interleaves them round by round so that they see the same machine state.

A model is timed where it will run (:data:`RUNTIMES`): PyTorch eager, or exported to ONNX and run by ONNX Runtime in
fp32 or statically quantized to int8 (:func:`runtime_session`), since a plan that is fast in one runtime need not be
in another (int8 kernels favour other channel counts than fp32 ones).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.structure import architecture_fingerprint

_CACHE: dict[tuple, float] = {}
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
# fp32 lanes of the widest vector unit torch dispatches to on this CPU (torch.backends.cpu.get_cpu_capability())
_SIMD_LANES = {"AVX512": 16, "AVX2": 8, "SVE256": 8}


def simd_channels() -> int:
    """How many fp32 channels fill one vector register of this CPU: 16 with AVX-512, 8 with AVX2, 4 otherwise (SSE,
    NEON, VSX). CPU convolution kernels (oneDNN, ONNX Runtime's MLAS) block channels by this width, so a channel
    count off that grid runs slower than its MACs say: ``round_to: auto`` rounds kept channels to it
    (benchmarks/results/latency_vs_macs.md measures what that buys per runtime; int8 kernels did best with 8)."""
    return _SIMD_LANES.get(torch.backends.cpu.get_cpu_capability(), 4)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Temporarily fix torch's intra-op thread count."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_once(model: Callable[[torch.Tensor], Any], x: torch.Tensor, iters: int) -> float:
    _sync(x.device)
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    _sync(x.device)
    return (time.perf_counter() - start) / iters * 1000.0


def _iters_for(model: Callable[[torch.Tensor], Any], x: torch.Tensor, target_ms: float = 20.0) -> int:
    """Calls per timed sample so that one sample lasts about ``target_ms`` (tiny models are timed in blocks)."""
    one = time_once(model, x, 1)
    return max(1, min(200, int(target_ms / max(one, 1e-3))))


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 15,
    device: torch.device | str | None = None,
    cache: bool = True,
) -> dict[int, float]:
    """Median milliseconds per forward pass for each batch size, in eval mode.

    Results are cached by architecture fingerprint, batch size, device and thread count.
    """
    return compare_latency(
        {"m": model},
        input_shape,
        batch_sizes,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        device=device,
        cache=cache,
    )["m"]


def compare_latency(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 15,
    device: torch.device | str | None = None,
    cache: bool = False,
) -> dict[str, dict[int, float]]:
    """Median latency (ms) of several models, measured in interleaved rounds so ratios between them are fair."""
    first = next(iter(models.values()))
    dev = torch.device(device) if device is not None else next(first.parameters()).device
    threads_key = threads or torch.get_num_threads()
    out: dict[str, dict[int, float]] = {name: {} for name in models}
    with num_threads(threads):
        for bs in batch_sizes:
            x = torch.randn(bs, *input_shape, device=dev)
            todo = {}
            for name, model in models.items():
                key = (architecture_fingerprint(model), bs, str(dev), threads_key)
                if cache and key in _CACHE:
                    out[name][bs] = _CACHE[key]
                else:
                    model.eval().to(dev)
                    todo[name] = (model, key)
            if not todo:
                continue
            timed = time_interleaved({name: m for name, (m, _) in todo.items()}, x, warmup=warmup, repeats=repeats)
            for name, (_, key) in todo.items():
                out[name][bs] = timed[name]
                if cache:
                    _CACHE[key] = out[name][bs]
    return out


def time_interleaved(
    runs: Mapping[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, *, warmup: int = 3, repeats: int = 15
) -> dict[str, float]:
    """Median ms per call of each callable on ``x``, timed in alternating rounds (each sample a block of calls
    lasting about 20 ms) so that all of them see the same machine state."""
    iters = {name: _iters_for(run, x) for name, run in runs.items()}
    for _ in range(warmup):
        for name, run in runs.items():
            time_once(run, x, iters[name])
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(time_once(run, x, iters[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise RLPruneError(f"latency runtime: expected one of {', '.join(RUNTIMES)}, got '{runtime}'")
    return runtime


def runtime_session(
    model: nn.Module, input_shape: Sequence[int], runtime: str, directory: str | Path, *, threads: int | None = None
) -> Callable[[torch.Tensor], Any]:
    """A callable that runs ``model`` as ``runtime`` does: the model itself (``torch``), or its ONNX export in an ONNX
    Runtime session, statically quantized to int8 first for ``onnxruntime-int8``. Only timing uses this, so the
    int8 calibration batch is random (activation ranges change the scales, not the kernels' speed), and the session's
    idle threads do not spin (it is timed in alternation with others).

    A single layer timed alone in int8 also pays for quantizing its input and dequantizing its output, which a whole
    int8 graph mostly avoids; the lookup table's line, fitted on whole models, absorbs that on average only."""
    if check_runtime(runtime) == "torch":
        return model.eval()
    from rlprune.deploy.int8 import OnnxModel, quantize_onnx
    from rlprune.deploy.onnx import export_onnx

    directory = Path(directory)
    fp32 = directory / "model.onnx"
    try:  # the TorchScript exporter takes a fraction of a second on a block; the dynamo one several
        export_onnx(model.eval(), tuple(input_shape), fp32, exporter="legacy")
    except RLPruneError:
        export_onnx(model.eval(), tuple(input_shape), fp32)
    path = fp32
    if runtime == "onnxruntime-int8":
        generator = torch.Generator().manual_seed(0)
        path = quantize_onnx(
            fp32, directory / "model.int8.onnx", [torch.randn(4, *input_shape, generator=generator)], input_shape
        )
    session = OnnxModel(path, threads=threads, spin=False)

    def run(x: torch.Tensor) -> Any:
        return session.session.run(None, {session.input_name: x.numpy()})

    return run


def compare_runtime_latency(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1,),
    *,
    runtime: str = "torch",
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 15,
) -> dict[str, dict[int, float]]:
    """:func:`compare_latency` in ``runtime`` (CPU): median ms per call of each model, timed in interleaved rounds."""
    if check_runtime(runtime) == "torch":
        return compare_latency(models, input_shape, batch_sizes, threads=threads, warmup=warmup, repeats=repeats)
    out: dict[str, dict[int, float]] = {name: {} for name in models}
    with tempfile.TemporaryDirectory() as tmp, num_threads(threads), torch.no_grad():  # no inference tensors: export
        runs = {}
        for i, (name, model) in enumerate(models.items()):
            (Path(tmp) / str(i)).mkdir()
            runs[name] = runtime_session(model, input_shape, runtime, Path(tmp) / str(i), threads=threads)
        for bs in batch_sizes:
            timed = time_interleaved(runs, torch.randn(bs, *input_shape), warmup=warmup, repeats=repeats)
            for name, ms in timed.items():
                out[name][bs] = ms
    return out
