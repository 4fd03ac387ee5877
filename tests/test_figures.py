"""The figures: each is drawn, has a sane size, is not blank, carries its labels; the report, a search run directory
and TensorBoard get them."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import PreferenceScorer

from rlprune.config import SearchConfig
from rlprune.evaluation.classes import class_chart
from rlprune.io.reports import FinetuneReport
from rlprune.models import build_model
from rlprune.pruning import Plan, Structure, analyze
from rlprune.pruning.structure import Layer, Unit
from rlprune.reporting import figures, outputs
from rlprune.reporting.finetune_md import finetune_markdown
from rlprune.searching.api import run_search

RESNET20 = analyze(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32))


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def _check_png(png: bytes, min_side: int = 300, max_side: int = 4200) -> np.ndarray:
    """A PNG of sane size whose pixels vary (a blank or single-colour image fails)."""
    px = _pixels(png)
    h, w, _ = px.shape
    assert min_side <= w <= max_side and min_side <= h <= max_side, (w, h)
    assert px.std() > 20.0
    assert (px.mean(axis=2) < 128).mean() > 0.005  # there is dark ink: text, axes
    return px


def _random_plan(structure: Structure, seed: int = 0) -> Plan:
    rng = random.Random(seed)
    return Plan.from_ratios(structure, [rng.uniform(0.0, 0.7) for _ in structure.units], model="test")


def _synthetic_structure(n: int) -> Structure:
    """``n`` units of mixed kinds (one the figures do not know) in a chain of layers with real MAC counts."""
    kinds = ["conv", "depthwise", "linear", "attention", "some_new_kind"]
    units, layers = [], []
    for i in range(n):
        width = 32 * (1 + i % 3)
        name = f"encoder.layers.encoder_layer_{i // 5}.block_{i % 5}.projection"
        macs = width * 64 * (i % 7 + 1) * 100
        units.append(Unit(i, name, kinds[i % 5], width, 64, 3, 1, 8, width * 64, macs, 2, (name,)))
        layers.append(Layer(name, macs, width * 64, width, i, i - 1 if i else None, False))
    total = sum(la.macs for la in layers) + 1000
    return Structure(units, layers, total, 10**6, f"synthetic{n}", (3, 32, 32))


def test_abbreviate_keeps_block_numbers_and_fits() -> None:
    assert figures.abbreviate("layers.3.conv1") == "layers.3.conv1"
    short = figures.abbreviate("encoder.layers.encoder_layer_11.self_attention.out_proj", 28)
    assert len(short) <= 28 and "11" in short
    assert figures.abbreviate("encoder.layers.encoder_layer_11.mlp.0") == "e.l.e11.mlp.0"
    assert len(figures.abbreviate("x" * 60)) == 24


def test_plan_profile_of_twelve_units_names_every_unit() -> None:
    plan = _random_plan(RESNET20)
    fig = figures.plan_profile_figure(plan, RESNET20, metrics={"accuracy": 71.25, "accuracy_label": "val accuracy"})
    ax_channels, ax_macs = fig.axes
    labels = [t.get_text() for t in ax_macs.get_xticklabels()]
    assert labels == [u.name for u in RESNET20.units]  # short names: vertical bars, every unit labelled
    title = fig.texts[0].get_text() if fig.texts else fig._suptitle.get_text()
    assert "MACs ratio" in title and "val accuracy 71.25%" in title
    ratio = float(title.split("MACs ratio ")[1].split()[0])
    from rlprune.cost.budget import macs_ratio

    assert ratio == pytest.approx(macs_ratio(RESNET20, plan), abs=1e-3)
    legend = [t.get_text() for t in ax_channels.get_legend().get_texts()]
    assert legend == ["dense", "conv"]
    # the MACs panel: dense shares, then pruned shares that are never larger
    bars = ax_macs.patches
    dense = [b.get_height() for b in bars[: len(RESNET20.units)]]
    pruned = [b.get_height() for b in bars[len(RESNET20.units) :]]
    assert all(p <= d + 1e-9 for p, d in zip(pruned, dense, strict=True)) and sum(dense) > 90
    _check_png(figures.to_png(fig))


@pytest.mark.parametrize("n", [120, 400])
def test_plan_profile_of_many_units_turns_horizontal_and_stays_readable(n: int) -> None:
    structure = _synthetic_structure(n)
    plan = _random_plan(structure, seed=n)
    fig = figures.plan_profile_figure(plan, structure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    names = [figures.abbreviate(u.name) for u in structure.units]
    if n == 120:
        assert labels == names  # every unit still labelled
    else:
        assert 50 < len(labels) < n and set(labels) <= set(names)  # thinned, never more than fit
        assert fig.get_figheight() <= figures.MAX_HEIGHT_IN
    assert all(len(label) <= 24 for label in labels)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["dense", "conv", "depthwise", "linear", "attention", "some_new_kind"]
    handles = ax.get_legend().legend_handles
    assert tuple(handles[-1].get_facecolor()[:3]) == pytest.approx(
        tuple(int(figures.OTHER_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5))
    )
    px = _check_png(figures.to_png(fig))
    assert px.shape[0] > px.shape[1]  # taller than wide


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for e in range(1, n + 1):
        acc = 50 + 30 * rng.random()
        out.append(
            {
                "episode": e,
                "accuracy": acc,
                "macs_ratio": 0.48 + 0.02 * rng.random(),
                "latency_ratio": None,
                "reward": acc / 100,
                "target": 0.5,
            }
        )
    return out


def test_front_is_the_best_accuracy_at_no_more_cost() -> None:
    xs, ys = figures.front([0.5, 0.4, 0.45, 0.3], [70.0, 60.0, 55.0, 65.0])
    assert xs == [0.3, 0.5] and ys == [65.0, 70.0]


def test_search_scatter_marks_the_best_the_uniform_plan_and_the_target() -> None:
    records = _records(40)
    fig = figures.search_scatter_figure(records, target=0.5, uniform={"accuracy": 55.0, "macs_ratio": 0.497})
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    best = max(records, key=lambda r: r["reward"])
    assert f"best plan (episode {best['episode']}): {best['accuracy']:.2f}%" in legend
    assert "uniform plan: 55.00%" in legend and "target 0.5" in legend
    _check_png(figures.to_png(fig))
    # a latency budget puts the latency ratio on the x axis when every record has one
    for r in records:
        r["latency_ratio"] = r["macs_ratio"] + 0.1
    fig = figures.search_scatter_figure(records, target=(0.55, 0.6), budget="latency")
    assert fig.axes[0].get_xlabel().startswith("latency ratio")
    _check_png(figures.to_png(fig))


def test_comparison_and_finetune_figures_render() -> None:
    groups = {
        "ppo": {"best": _records(3, 1), "plans": _records(60, 2)},
        "random": {"best": _records(3, 3)},  # only the best plans survive in a benchmark's results
    }
    fig = figures.comparison_figure(groups, target=0.5, title="comparison")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0].startswith("ppo: 3 run(s)") and legend[0].endswith("60 plans")
    _check_png(figures.to_png(fig))
    history = [
        {"epoch": e, "train_loss": 1.5 / e, "train_accuracy": 60 + e, "val_loss": 1.0 / e, "val_accuracy": 70 + e}
        for e in range(1, 6)
    ]
    fig = figures.finetune_figure(history, dense_accuracy=88.0, before_accuracy=40.0)
    acc_ax, loss_ax = fig.axes
    assert [line.get_label() for line in acc_ax.get_lines()][:2] == [
        "train",
        "validation (epoch 0: pruned, before fine-tune)",
    ]
    assert acc_ax.get_lines()[1].get_xdata()[0] == 0.0  # before fine-tune drawn at epoch 0
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "validation"]
    _check_png(figures.to_png(fig))
    # one epoch (the main job) still draws points, not an empty chart
    _check_png(figures.to_png(figures.finetune_figure(history[:1], dense_accuracy=88.0)))


def test_figures_leave_pyplot_alone() -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    figures.to_png(figures.finetune_figure([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 50.0}]))
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:  # imported by someone else: no figure of ours is registered there
        assert not sys.modules["matplotlib.pyplot"].get_fignums()


def test_report_embeds_its_figures(tmp_path: Path) -> None:
    plan = _random_plan(RESNET20)
    history = [{"epoch": 1, "train_loss": 1.1, "train_accuracy": 61.0, "val_loss": 0.9, "val_accuracy": 70.5}]
    raw = {
        "model": "resnet20",
        "plan_units": len(plan.ratios),
        "environment": {},
        "source": {},
        "dense": {"params": 270000, "macs": 40_000_000, "val": 88.0, "test": 87.0},
        "pruned": {
            "params": 130000,
            "macs": 20_000_000,
            "macs_ratio": 0.5,
            "before_finetune": {"val": 40.0, "test": 39.0},
            "after_finetune": {"val": 80.0, "test": 79.0},
        },
        "latency_ms_cpu": {"dense": {"1": 2.0, "64": 40.0}, "pruned": {"1": 1.4, "64": 22.0}},
        "latency_ms_gpu": None,
        "onnx": {"max_abs_diff": 1e-6},
        "finetune": {"epochs": 1, "lr": 0.02, "distill": True, "swa": None, "history": history},
    }
    per_class = [{"class": c, "precision": 90.0, "recall": r, "f1": 88.0, "support": 10} for c, r in (("cat", 70.0),)]
    chart = class_chart({"dense": {"per_class": per_class}, "pruned": {"per_class": per_class}}, tmp_path / "c.png")
    report = FinetuneReport.parse(raw, "test report")
    report.classes = {
        "dense": {"accuracy": 87.0, "macro_f1": 86.5, "worst_class_accuracy": 70.0, "per_class": per_class},
        "pruned": {"accuracy": 79.0, "macro_f1": 78.0, "worst_class_drop": 6.0, "per_class": per_class},
        "chart": str(chart),
    }
    report.figures = outputs.write_report_figures(tmp_path, report, plan, RESNET20, tmp_path / "tb")
    assert report.figures == {"plan_profile": "plan_profile.png", "finetune": "finetune.png"}
    md = finetune_markdown(report)
    for file in report.figures.values():
        assert f"]({file})" in md
        _check_png((tmp_path / file).read_bytes())
    events = b"".join(p.read_bytes() for p in (tmp_path / "tb").rglob("events.out.tfevents*"))
    assert b"report/plan_profile" in events and b"report/finetune" in events
    # the per-class picture of the test split: scalars and the bar chart
    assert b"classes/pruned/worst_class_drop" in events and b"classes/dense/recall/cat" in events
    assert b"report/classes" in events


def _cfg(tmp_path: Path, name: str, episodes: int, **agent: object) -> SearchConfig:
    return SearchConfig(name=name, checkpoint="unused", output_dir=str(tmp_path), agent={"episodes": episodes, **agent})


@pytest.mark.parametrize("searcher", ["random", None])
def test_a_search_run_directory_holds_its_figures(tmp_path: Path, searcher: str | None) -> None:
    agent = {} if searcher else {"hyperparams": {"n_steps": 24, "batch_size": 12}, "checkpoint_every": 4}
    summary = run_search(
        _cfg(tmp_path, "run", 6, **agent), searcher=searcher, scorer=PreferenceScorer(RESNET20, {0, 5}), progress=False
    )
    run = tmp_path / "run"
    for name in ("search.png", "best_plan.png"):
        _check_png((run / name).read_bytes())
    uniform = summary.uniform
    assert 0.45 <= uniform.macs_ratio <= 0.5 and 0 < uniform.accuracy <= 100
    assert len((run / "episodes.jsonl").read_text().splitlines()) == 6  # the uniform plan is not an episode
    events = b"".join(p.read_bytes() for p in (run / "tb").rglob("events.out.tfevents*"))
    for tag in (b"search/scatter", b"search/best_plan", b"custom_scalars", b"search/best_accuracy"):
        assert tag in events, tag
    assert b"_hparams_/session_start_info" in events
    assert json.loads((run / "summary.json").read_text())["uniform"] == uniform.to_dict()
