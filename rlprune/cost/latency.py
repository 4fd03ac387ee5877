"""Measured latency: warm-up, repeated timed runs, the median, a fixed thread count, CUDA synchronisation.

Latency on small CPUs is not proportional to MACs (ResNet-20 at 48% of the MACs ran at 0.73x of the dense latency at
batch 1), so it is measured. Single runs swing up to 2x on shared machines: compare models with
:func:`compare_latency`, which interleaves them round by round so that they see the same machine state.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from rlprune.pruning.structure import architecture_fingerprint

_CACHE: dict[tuple, float] = {}


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
def time_once(model: nn.Module, x: torch.Tensor, iters: int) -> float:
    _sync(x.device)
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    _sync(x.device)
    return (time.perf_counter() - start) / iters * 1000.0


def _iters_for(model: nn.Module, x: torch.Tensor, target_ms: float = 20.0) -> int:
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
            iters = {name: _iters_for(m, x) for name, (m, _) in todo.items()}
            for _ in range(warmup):
                for name, (m, _) in todo.items():
                    time_once(m, x, iters[name])
            samples: dict[str, list[float]] = {name: [] for name in todo}
            for _ in range(repeats):
                for name, (m, _) in todo.items():
                    samples[name].append(time_once(m, x, iters[name]))
            for name, (_, key) in todo.items():
                out[name][bs] = statistics.median(samples[name])
                if cache:
                    _CACHE[key] = out[name][bs]
    return out
