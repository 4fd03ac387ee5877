"""Per-layer latency lookup table: predict a plan's latency without building or running the pruned model.

Every conv/linear layer of the dense model (together with the BN and activation that follow it, which scale with its
outputs) is timed in isolation on a grid of kept-channel fractions for its input and output; a plan's latency is
an affine function ``a + b·S`` of the sum ``S`` of bilinearly interpolated layer latencies. ``a`` and ``b`` are
fitted on two measured models, the dense one and one pruned uniformly to half its channels, which absorbs what
isolated layers do not show (pooling, additions, framework overhead, cache effects). Identical layer shapes are
timed once.

Blocks and models are timed in the table's ``runtime`` (PyTorch eager, or ONNX Runtime fp32 / int8, the runtimes
a pruned model is deployed with; :data:`rlprune.cost.latency.RUNTIMES`), so that a search steers by the latency of
the model the user will run.

Non-uniform plans near a budget run slower than that two-point line predicts (odd channel counts between grid points,
uneven layers; benchmarks/results/latency_budget.md). ``calibrate``
refits the line through the dense model and a handful of measured plans at the budget itself, so that the budget
the search steers by is the measured one on average.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune.cost.latency import check_runtime, compare_runtime_latency, num_threads, runtime_session, time_once
from rlprune.errors import RLPruneError
from rlprune.io.files import atomic_write_text
from rlprune.pruning.cut import prune
from rlprune.pruning.plan import Plan
from rlprune.pruning.structure import Structure
from rlprune.seeding import on_device

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass
class LatencyTable:
    """Per-layer latencies on a grid of (input fraction, output fraction), for one batch size."""

    batch_size: int
    grid: tuple[float, ...]
    layers: dict[str, list[list[float]]]  # layer name -> [in_idx][out_idx] ms
    offset_ms: float
    scale: float
    dense_ms: float
    fingerprint: str
    calibration: dict[str, float] | None = None  # set by calibrate(): how the line was refitted on measured plans
    runtime: str = "torch"  # where blocks and models were timed (rlprune.cost.latency.RUNTIMES)

    def predict(self, structure: Structure, channels: Mapping[str, int]) -> float:
        """Predicted milliseconds for the model pruned to ``channels`` (unit name -> kept channels)."""
        return self.offset_ms + self.scale * self.layer_sum(structure, channels)

    def layer_sum(self, structure: Structure, channels: Mapping[str, int]) -> float:
        """Sum of the interpolated per-layer latencies (ms)."""
        frac = [channels.get(u.name, u.channels) / u.channels for u in structure.units]
        grid = np.asarray(self.grid)
        total = 0.0
        for la in structure.layers:
            table = self.layers.get(la.name)
            if table is None:
                continue
            f_out = frac[la.out_unit] if la.out_unit is not None else 1.0
            f_in = f_out if la.depthwise else (frac[la.in_unit] if la.in_unit is not None else 1.0)
            total += _bilinear(grid, np.asarray(table), f_in, f_out)
        return float(total)

    def to_dict(self) -> dict[str, object]:
        return {
            "batch_size": self.batch_size,
            "grid": list(self.grid),
            "layers": self.layers,
            "offset_ms": self.offset_ms,
            "scale": self.scale,
            "dense_ms": self.dense_ms,
            "fingerprint": self.fingerprint,
            "calibration": self.calibration,
            "runtime": self.runtime,
        }

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        d = json.loads(Path(path).read_text())
        return cls(
            batch_size=int(d["batch_size"]),
            grid=tuple(d["grid"]),
            layers={name: monotone(t) for name, t in d["layers"].items()},
            offset_ms=float(d["offset_ms"]),
            scale=float(d["scale"]),
            dense_ms=float(d["dense_ms"]),
            fingerprint=d["fingerprint"],
            calibration=d.get("calibration"),
            runtime=check_runtime(str(d.get("runtime", "torch"))),  # tables from before runtimes timed PyTorch
        )


def _bilinear(grid: np.ndarray, table: np.ndarray, fx: float, fy: float) -> float:
    def locate(f: float) -> tuple[int, int, float]:
        f = float(np.clip(f, grid[0], grid[-1]))
        j = int(np.searchsorted(grid, f))
        if j == 0:
            return 0, 0, 0.0
        i = j - 1
        return i, j, (f - grid[i]) / (grid[j] - grid[i])

    i0, i1, tx = locate(fx)
    j0, j1, ty = locate(fy)
    top = table[i0][j0] * (1 - ty) + table[i0][j1] * ty
    bottom = table[i1][j0] * (1 - ty) + table[i1][j1] * ty
    return float(top * (1 - tx) + bottom * tx)


def _layer_block(layer: nn.Module, cin: int, cout: int, with_bn: bool) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(cin, cout)
    depthwise = layer.groups > 1 and layer.groups == layer.out_channels
    conv = nn.Conv2d(
        cin,
        cout,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        groups=cout if depthwise else 1,
        bias=layer.bias is not None,
    )
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU()) if with_bn else conv


def timeable(model: nn.Module, structure: Structure) -> bool:
    """Whether :func:`build_latency_table` can time ``model``: every layer with MACs is a Conv2d or Linear."""
    modules = dict(model.named_modules())
    return all(isinstance(modules.get(la.name), nn.Conv2d | nn.Linear) for la in structure.layers if la.macs)


def build_latency_table(
    model: nn.Module,
    structure: Structure,
    batch_size: int = 1,
    *,
    grid: Sequence[float] = GRID,
    threads: int | None = None,
    repeats: int = 7,
    runtime: str = "torch",
) -> LatencyTable:
    """Time every conv/linear layer of ``model`` at each grid point in ``runtime`` (see module docstring)."""
    check_runtime(runtime)
    model = on_device(model, torch.device("cpu"))  # shapes are read on the CPU, where the blocks are timed
    example = torch.zeros(1, *structure.input_shape)
    inputs: dict[nn.Module, tuple] = {}

    def record(mod: nn.Module, inp: tuple, _out: object) -> None:
        inputs.setdefault(mod, tuple(inp[0].shape))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(example)
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    timed: dict[tuple, list[list[float]]] = {}
    layers: dict[str, list[list[float]]] = {}
    # ONNX export needs ordinary tensors: blocks for another runtime are built under no_grad, not inference_mode
    grad_off = torch.inference_mode() if runtime == "torch" else torch.no_grad()
    with num_threads(threads), grad_off:
        for la in structure.layers:
            if la.macs == 0:
                continue
            layer = modules[la.name]
            if not isinstance(layer, nn.Conv2d | nn.Linear):
                raise RLPruneError(
                    f"latency table: layer '{la.name}' is a {type(layer).__name__}; only Conv2d and Linear layers "
                    "can be timed per layer (use a MACs budget for this model)"
                )
            in_shape = inputs[layer]
            cin = in_shape[1] if isinstance(layer, nn.Conv2d) else in_shape[-1]
            cout = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            depthwise = la.depthwise
            key = (
                type(layer).__name__,
                in_shape[1:],
                cout,
                getattr(layer, "kernel_size", None),
                getattr(layer, "stride", None),
                depthwise,
                la.in_unit is None,
                la.out_unit is None,
            )
            if key not in timed:
                table = []
                for fi in grid:
                    row = []
                    for fo in grid:
                        ci = cin if la.in_unit is None and not depthwise else max(1, round(cin * fi))
                        co = cout if la.out_unit is None else max(1, round(cout * fo))
                        if depthwise:
                            ci = co
                        block = _layer_block(layer, ci, co, with_bn=isinstance(layer, nn.Conv2d)).eval()
                        x = torch.randn(batch_size, ci, *in_shape[2:])
                        with tempfile.TemporaryDirectory() as tmp:
                            run = runtime_session(block, x.shape[1:], runtime, tmp, threads=threads)
                            iters = max(1, min(200, int(5.0 / max(time_once(run, x, 1), 1e-3))))
                            time_once(run, x, iters)
                            row.append(statistics.median(time_once(run, x, iters) for _ in range(repeats)))
                    table.append(row)
                timed[key] = table
            layers[la.name] = timed[key]
    layers = {name: monotone(t) for name, t in layers.items()}
    half = Plan.from_ratios(structure, [0.5] * len(structure.units))
    pruned, _ = prune(model, half, example)
    measured = compare_runtime_latency(
        {"dense": model, "half": pruned}, structure.input_shape, (batch_size,), runtime=runtime, threads=threads
    )
    dense_ms, half_ms = measured["dense"][batch_size], measured["half"][batch_size]
    table = LatencyTable(batch_size, tuple(grid), layers, 0.0, 1.0, dense_ms, structure.fingerprint, runtime=runtime)
    s_dense, s_half = table.layer_sum(structure, {}), table.layer_sum(structure, half.channels)
    table.scale, table.offset_ms = line_through_dense(s_dense, dense_ms, [s_half], [half_ms / dense_ms])
    return table


def line_through_dense(
    dense_sum: float, dense_ms: float, sums: Sequence[float], ratios: Sequence[float]
) -> tuple[float, float]:
    """``(scale, offset_ms)`` of the line ``offset + scale·S`` that predicts the dense model exactly and fits the
    measured latency ratios of pruned models (layer sums ``sums``) in the least-squares sense.

    If timing noise makes the pruned models look as slow as the dense one, the slope falls back to a pure scale,
    which keeps predictions increasing in channels (the budget clamp relies on that).
    """
    drops = [dense_sum - s for s in sums]
    gains = [1.0 - r for r in ratios]
    denom = sum(d * d for d in drops)
    scale = dense_ms * sum(g * d for g, d in zip(gains, drops, strict=True)) / denom if denom > 0 else 0.0
    if scale < 0.1 * dense_ms / dense_sum:
        scale = dense_ms / dense_sum
    return scale, dense_ms - scale * dense_sum


def measured_latency_ratio(
    model: nn.Module,
    structure: Structure,
    plan: Plan,
    batch_size: int,
    *,
    threads: int | None = None,
    runtime: str = "torch",
) -> float:
    """Pruned/dense latency of ``plan`` on the CPU model ``model`` in ``runtime``, timed in interleaved rounds
    (medians).

    Latency depends only on how many channels each unit keeps, so channels are picked by L1 norm whatever the
    plan's criterion (no calibration data is needed for gradient-based ones).
    """
    pruned, _ = prune(model, plan, torch.zeros(1, *structure.input_shape), importance="l1")
    lat = compare_runtime_latency(
        {"dense": model, "pruned": pruned}, structure.input_shape, (batch_size,), runtime=runtime, threads=threads
    )
    return lat["pruned"][batch_size] / lat["dense"][batch_size]


def calibrate(
    table: LatencyTable,
    model: nn.Module,
    structure: Structure,
    plans: Sequence[Plan],
    *,
    threads: int | None = None,
) -> LatencyTable:
    """Refit ``table``'s line through the dense model and the measured latency of ``plans`` (plans at the budget).

    Each plan is pruned for real and timed against the dense model in interleaved rounds (ratios, not absolute
    times, so that a machine that is busier during one measurement than another skews nothing). Returns a new table
    whose ``calibration`` records the mean predicted and measured ratio of the plans before and after.
    """
    if not plans:
        return table
    sums, measured, before = [], [], []
    for plan in plans:
        measured.append(
            measured_latency_ratio(model, structure, plan, table.batch_size, threads=threads, runtime=table.runtime)
        )
        sums.append(table.layer_sum(structure, plan.channels))
        before.append(table.predict(structure, plan.channels) / table.dense_ms)
    s_dense = table.layer_sum(structure, {})
    scale, offset = line_through_dense(s_dense, table.dense_ms, sums, measured)
    after = [(offset + scale * s) / table.dense_ms for s in sums]
    info = {
        "plans": len(plans),
        "measured_ratio_mean": statistics.mean(measured),
        "predicted_ratio_mean_before": statistics.mean(before),
        "predicted_ratio_mean_after": statistics.mean(after),
        "abs_error_before": statistics.mean(abs(m - p) for m, p in zip(measured, before, strict=True)),
        "abs_error_after": statistics.mean(abs(m - p) for m, p in zip(measured, after, strict=True)),
    }
    return dataclasses.replace(table, scale=scale, offset_ms=offset, calibration=info)


def monotone(table: list[list[float]]) -> list[list[float]]:
    """The smallest table >= ``table`` that never decreases with more input or output channels.

    Timings of small blocks are noisy; a layer that seems faster with more channels would let a plan's predicted
    latency go down as channels are added, and the environment's budget clamp (bisection on the predicted cost)
    relies on the opposite.
    """
    out = [list(row) for row in table]
    for i, row in enumerate(out):
        for j in range(len(row)):
            row[j] = max(row[j], out[i - 1][j] if i else row[j], row[j - 1] if j else row[j])
    return out
