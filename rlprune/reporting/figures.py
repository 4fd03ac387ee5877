"""Every figure rlprune draws: the plan profile, the search scatter, a comparison of searches and the fine-tune
curves, and where they go (the report, a run directory, TensorBoard, a benchmark's Markdown).

Figures are built with matplotlib's object API (``Figure`` rendered by the Agg canvas), never through ``pyplot``:
nothing touches the user's global backend or pyplot's figure registry, so importing rlprune in a notebook changes
nothing there and a headless machine needs no display. The ``*_figure`` functions return a ``Figure`` (tests read its
labels before anything is rendered); :func:`to_png` and :func:`to_hwc` render one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from rlprune.cost.macs import predict_costs
from rlprune.pruning.plan import Plan
from rlprune.pruning.structure import Structure

# One colour per unit kind. Kinds this module does not know (new unit types added elsewhere) are drawn in grey and
# named in the legend as they are, so a new kind is visible without being mistaken for a known one.
KIND_COLOURS = {
    "conv": "#4C72B0",
    "depthwise": "#DD8452",
    "grouped": "#C44E52",
    "linear": "#55A868",
    "attention": "#8172B3",
}
OTHER_COLOUR = "#8C8C8C"
DENSE_COLOUR = "#D9D9D9"
# Up to this many units the profile uses vertical bars with unit names under them; beyond, horizontal bars with the
# names down the side and a figure that grows with the number of units.
VERTICAL_MAX_UNITS = 40
INCH_PER_ROW = 0.15  # horizontal layout: room per unit (fits a 6-point label)
MAX_HEIGHT_IN = 40.0  # beyond this, labels are thinned instead of the figure growing further
DPI = 100

# TensorBoard custom-scalars layout: one chart per quantity, every search run on it (tags are regexes).
SEARCH_LAYOUT: dict[str, dict[str, list[Any]]] = {
    "search": {
        "accuracy (episode and best so far)": ["Multiline", [r"search/accuracy$", r"search/best_accuracy$"]],
        "cost ratios (MACs, latency)": ["Multiline", [r"search/macs_ratio$", r"search/latency_ratio$"]],
        "reward (episode and best so far)": ["Multiline", [r"search/reward$", r"search/best_reward$"]],
    },
    "agent losses": {
        "PPO losses": [
            "Multiline",
            [r"train/policy_gradient_loss$", r"train/value_loss$", r"train/entropy_loss$", r"train/loss$"],
        ],
        "PPO update size": ["Multiline", [r"train/approx_kl$", r"train/clip_fraction$"]],
        "actor-critic losses (DDPG, TD3, SAC)": [
            "Multiline",
            [r"train/actor_loss$", r"train/critic_loss$", r"train/ent_coef_loss$"],
        ],
    },
}


def kind_colour(kind: str) -> str:
    return KIND_COLOURS.get(kind, OTHER_COLOUR)


def abbreviate(name: str, width: int = 24) -> str:
    """A unit name short enough for an axis label. Leading dotted parts shrink one by one to their first letter
    and their trailing number, which is what tells blocks apart (``encoder.layers.encoder_layer_11.mlp.0`` ->
    ``e.l.e11.mlp.0``); if that is not enough the start is elided."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    for i in range(len(parts) - 1):
        part = parts[i]
        digits = part[len(part.rstrip("0123456789")) :]
        parts[i] = part if part.isdigit() else part[:1] + digits
        short = ".".join(parts)
        if len(short) <= width:
            return short
    short = ".".join(parts)
    return short if len(short) <= width else "…" + short[-(width - 1) :]


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas (no pyplot, no display)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def to_hwc(fig: Figure) -> np.ndarray:
    """The figure as an HxWx3 uint8 array (what TensorBoard image summaries take)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG through a temporary file, so a reader never sees half an image."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(to_png(fig))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------------- plan profile
def unit_macs(structure: Structure, channels: Mapping[str, int]) -> tuple[list[float], list[float]]:
    """Per unit, the MACs of the layers whose outputs it prunes, dense and with ``channels`` kept (the same
    accounting as :func:`rlprune.cost.macs.predict_costs`, split by unit)."""
    units = structure.units
    frac = [channels.get(u.name, u.channels) / u.channels for u in units]
    dense = [0.0] * len(units)
    pruned = [0.0] * len(units)
    for la in structure.layers:
        if la.out_unit is None:
            continue
        f_in = frac[la.in_unit] if la.in_unit is not None else 1.0
        dense[la.out_unit] += la.macs
        pruned[la.out_unit] += la.macs * frac[la.out_unit] * f_in
    return dense, pruned


def _title(head: str, metrics: Mapping[str, Any], max_chars: int) -> str:
    """The head line, then the metrics joined by `` · `` and wrapped to lines of at most ``max_chars``."""
    parts = []
    if metrics.get("macs_ratio") is not None:
        parts.append(f"MACs ratio {metrics['macs_ratio']:.3f}")
    if metrics.get("latency_ratio") is not None:
        parts.append(f"{metrics.get('latency_label', 'latency ratio')} {metrics['latency_ratio']:.3f}")
    if metrics.get("accuracy") is not None:
        parts.append(
            f"{metrics.get('accuracy_label', 'accuracy')} {metrics['accuracy']:.2f}%{metrics.get('accuracy_note', '')}"
        )
    lines = [head]
    current = ""
    for part in parts:
        if current and len(current) + 3 + len(part) > max_chars:
            lines.append(current)
            current = part
        else:
            current = f"{current} · {part}" if current else part
    if current:
        lines.append(current)
    return "\n".join(lines)


def plan_profile_figure(
    plan: Plan, structure: Structure, *, title: str | None = None, metrics: Mapping[str, Any] | None = None
) -> Figure:
    """Per unit, in forward order: dense channels (grey) against kept channels (coloured by the unit's kind), and
    each unit's share of the dense model's MACs before and after pruning.

    :param metrics: shown in the title: ``macs_ratio`` (predicted from the plan when absent), ``latency_ratio``
        (with ``latency_label``), ``accuracy`` (percent, with ``accuracy_label``).
    """
    units = structure.units
    n = len(units)
    names = [abbreviate(u.name) for u in units]
    dense_ch = np.array([u.channels for u in units], dtype=float)
    kept_ch = np.array([plan.channels.get(u.name, u.channels) for u in units], dtype=float)
    dense_macs, pruned_macs = unit_macs(structure, plan.channels)
    total = float(structure.total_macs) or 1.0
    dense_share = 100.0 * np.array(dense_macs) / total
    pruned_share = 100.0 * np.array(pruned_macs) / total
    colours = [kind_colour(u.kind) for u in units]
    metrics = dict(metrics or {})
    if metrics.get("macs_ratio") is None:
        metrics["macs_ratio"] = predict_costs(structure, plan.channels)[0] / total
    head = title or f"{plan.model or 'plan'}: {n} prunable units"
    pos = np.arange(n)
    if n <= VERTICAL_MAX_UNITS:
        fig = Figure(figsize=(max(7.0, 0.34 * n + 2.5), 6.4), dpi=DPI, layout="constrained")
        ax, axm = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
        ax.bar(pos, dense_ch, 0.8, color=DENSE_COLOUR, edgecolor="#999999", linewidth=0.5)
        ax.bar(pos, kept_ch, 0.56, color=colours)
        axm.bar(pos - 0.2, dense_share, 0.4, color=DENSE_COLOUR, edgecolor="#999999", linewidth=0.5)
        axm.bar(pos + 0.2, pruned_share, 0.4, color=colours)
        ax.set_ylabel("channels (dense / kept)")
        axm.set_ylabel("share of dense MACs (%)\ndense | pruned")
        axm.set_xticks(pos, names, rotation=70, ha="right", rotation_mode="anchor", fontsize=8)
        ax.tick_params(axis="x", labelbottom=False)
        for a in (ax, axm):
            a.set_xlim(-0.6, n - 0.4)
            a.grid(axis="y", alpha=0.3)
        label_axis = axm.xaxis
    else:
        height = min(MAX_HEIGHT_IN, max(6.0, INCH_PER_ROW * n + 1.8))
        fig = Figure(figsize=(10.0, height), dpi=DPI, layout="constrained")
        ax, axm = fig.subplots(1, 2, sharey=True, width_ratios=[2, 1])
        ax.barh(pos, dense_ch, 0.8, color=DENSE_COLOUR, edgecolor="#999999", linewidth=0.3)
        ax.barh(pos, kept_ch, 0.56, color=colours)
        axm.barh(pos - 0.2, dense_share, 0.4, color=DENSE_COLOUR)
        axm.barh(pos + 0.2, pruned_share, 0.4, color=colours)
        ax.set_xlabel("channels (dense / kept)")
        axm.set_xlabel("share of dense MACs (%)\n(upper bar dense, lower pruned)")
        rows = math.floor((height - 1.8) / INCH_PER_ROW + 1e-6)  # labels that fit; beyond, every step-th is shown
        step = max(1, math.ceil(n / rows))
        shown = pos[::step]
        ax.set_yticks(shown, [names[i] for i in shown], fontsize=6)
        ax.set_ylim(n - 0.4, -0.6)  # forward order, top to bottom
        for a in (ax, axm):
            a.grid(axis="x", alpha=0.3)
        label_axis = ax.yaxis
    kinds = list(dict.fromkeys(u.kind for u in units))
    handles = [Patch(color=DENSE_COLOUR, label="dense")] + [Patch(color=kind_colour(k), label=k) for k in kinds]
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        title="channels kept, by unit kind (grey: dense)",
        title_fontsize=8,
    )
    fig.suptitle(_title(head, metrics, int(fig.get_figwidth() * 11)), fontsize=11)
    label_axis.set_label_text(label_axis.get_label_text() or "unit (forward order)")
    return fig


# ----------------------------------------------------------------------------------------------- search scatter
def cost_key(records: Sequence[Mapping[str, Any]], budget: str = "macs") -> str:
    """What the budget counted, when the records carry it: ``latency_ratio`` for a latency budget, ``budget_cost``
    (non-zero parameters) for a parameter budget; else ``macs_ratio``."""
    if budget == "latency" and records and all(r.get("latency_ratio") is not None for r in records):
        return "latency_ratio"
    if budget == "params" and records and all(r.get("budget_cost") is not None for r in records):
        return "budget_cost"
    return "macs_ratio"


def front(costs: Sequence[float], accs: Sequence[float]) -> tuple[list[float], list[float]]:
    """The best-so-far front: plans, by cost, that are more accurate than every cheaper plan."""
    xs, ys, best = [], [], -math.inf
    for c, a in sorted(zip(costs, accs, strict=True), key=lambda t: (t[0], -t[1])):
        if a > best:
            xs.append(c)
            ys.append(a)
            best = a
    return xs, ys


def _mark_target(ax: Any, target: float | Sequence[float] | None) -> None:
    if target is None:
        return
    if isinstance(target, int | float):
        ax.axvline(float(target), color="#555555", linestyle="--", linewidth=1.2, label=f"target {target:g}")
    else:
        lo, hi = (float(t) for t in target)
        ax.axvspan(lo, hi, color="#555555", alpha=0.12, label=f"target {lo:g}–{hi:g}")


def search_scatter_figure(
    records: Sequence[Mapping[str, Any]],
    *,
    target: float | Sequence[float] | None = None,
    budget: str = "macs",
    uniform: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Figure:
    """Left: every evaluated plan's accuracy against its cost ratio, coloured by episode, with the best-so-far front,
    the best plan (highest reward), the uniform plan and the target. Right: accuracy per episode and the best so far.

    :param records: the search's ``episodes.jsonl`` records (``episode``, ``accuracy``, ``macs_ratio``,
        ``latency_ratio``, ``reward``).
    :param uniform: the uniform plan's ``accuracy`` and cost ratios, when it was scored.
    """
    key = cost_key(records, budget)
    label = {"latency_ratio": "latency ratio (predicted)", "budget_cost": "non-zero parameters ratio"}.get(
        key, "MACs ratio"
    )
    episodes = np.array([r["episode"] for r in records], dtype=float)
    accs = np.array([r["accuracy"] for r in records], dtype=float)
    costs = np.array([r[key] for r in records], dtype=float)
    fig = Figure(figsize=(12.0, 5.0), dpi=DPI, layout="constrained")
    ax, axe = fig.subplots(1, 2, width_ratios=[3, 2])
    points = ax.scatter(costs, accs, c=episodes, cmap="viridis", s=18, alpha=0.8, edgecolors="none")
    fig.colorbar(points, ax=ax, label="episode", pad=0.01)
    if len(records):
        fx, fy = front(costs.tolist(), accs.tolist())
        fx, fy = [*fx, float(costs.max())], [*fy, fy[-1]]  # the front holds up to the dearest plan
        ax.step(fx, fy, where="post", color="#333333", linewidth=1.2, label="front (best accuracy at ≤ cost)")
        best = max(records, key=lambda r: r["reward"])
        ax.scatter(
            [best[key]],
            [best["accuracy"]],
            marker="*",
            s=260,
            color="#C44E52",
            edgecolors="black",
            zorder=5,
            label=f"best plan (episode {best['episode']}): {best['accuracy']:.2f}%",
        )
    if uniform is not None and uniform.get(key) is not None:
        ax.scatter(
            [uniform[key]],
            [uniform["accuracy"]],
            marker="X",
            s=140,
            color="black",
            zorder=5,
            label=f"uniform plan: {uniform['accuracy']:.2f}%",
        )
    _mark_target(ax, target)
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=2)
    axe.scatter(episodes, accs, s=8, color="#999999", alpha=0.7, label="episode")
    if len(records):
        so_far, best_r, best_a = [], -math.inf, 0.0
        for r in records:
            if r["reward"] > best_r:
                best_r, best_a = r["reward"], r["accuracy"]
            so_far.append(best_a)
        axe.step(episodes, so_far, where="post", color="#C44E52", linewidth=1.6, label="best so far (by reward)")
    if uniform is not None:
        axe.axhline(uniform["accuracy"], color="black", linestyle=":", linewidth=1.2, label="uniform plan")
    axe.set_xlabel("episode")
    axe.set_ylabel("accuracy (%)")
    axe.grid(alpha=0.3)
    _legend_below(axe, ncol=2)
    fig.suptitle(title or f"search: {len(records)} evaluated plans", fontsize=11)
    return fig


def _legend_below(ax: Any, ncol: int) -> None:
    """A legend under the axes, where it can hide no point."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=ncol, frameon=False)


def comparison_figure(
    groups: Mapping[str, Mapping[str, Any]],
    *,
    target: float | Sequence[float] | None = None,
    cost: str = "macs_ratio",
    title: str = "",
    ylabel: str = "accuracy (%)",
) -> Figure:
    """Several searches on one scatter: per searcher (one colour), every evaluated plan when its records are known
    (``plans``: records) and each run's best plan (``best``: records, drawn large).

    A benchmark whose per-episode records are gone can still draw the best plans from its committed results.
    """
    fig = Figure(figsize=(9.0, 5.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    for i, (name, group) in enumerate(groups.items()):
        colour = palette[i % len(palette)]
        plans = group.get("plans") or []
        if plans:
            ax.scatter(
                [p[cost] for p in plans],
                [p["accuracy"] for p in plans],
                s=7,
                alpha=0.35,
                color=colour,
                edgecolors="none",
            )
        bests = group.get("best") or []
        accs = [b["accuracy"] for b in bests]
        mean = f", mean {sum(accs) / len(accs):.2f}%" if accs else ""
        ax.scatter(
            [b[cost] for b in bests],
            accs,
            s=110,
            color=colour,
            edgecolors="black",
            linewidths=0.8,
            marker="o" if plans else "D",
            zorder=4,
            label=f"{name}: {len(bests)} run(s){mean}" + (f", {len(plans)} plans" if plans else ""),
        )
    _mark_target(ax, target)
    ax.set_xlabel("MACs ratio" if cost == "macs_ratio" else cost.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_title(title, fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------- fine-tune curves
def finetune_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    dense_accuracy: float | None = None,
    before_accuracy: float | None = None,
    title: str = "fine-tune",
) -> Figure:
    """Train and validation accuracy and loss per epoch, the dense model's validation accuracy as a line and the
    pruned model's before fine-tuning at epoch 0."""
    fig = Figure(figsize=(10.0, 4.2), dpi=DPI, layout="constrained")
    ax, axl = fig.subplots(1, 2)

    def series(key: str) -> tuple[list[float], list[float]]:
        rows = [r for r in history if r.get(key) is not None and math.isfinite(float(r[key]))]
        return [float(r["epoch"]) for r in rows], [float(r[key]) for r in rows]

    val_label = "validation (epoch 0: pruned, before fine-tune)" if before_accuracy is not None else "validation"
    for key, style, lab in (("train_accuracy", "o-", "train"), ("val_accuracy", "s-", val_label)):
        x, y = series(key)
        if key == "val_accuracy" and before_accuracy is not None:
            x, y = [0.0, *x], [before_accuracy, *y]
        if x:
            ax.plot(x, y, style, label=lab, markersize=4)
    if dense_accuracy is not None:
        ax.axhline(
            dense_accuracy,
            color="black",
            linestyle="--",
            linewidth=1.0,
            label=f"dense validation {dense_accuracy:.2f}%",
        )
    for key, style, lab in (("train_loss", "o-", "train"), ("val_loss", "s-", "validation")):
        x, y = series(key)
        if x:
            axl.plot(x, y, style, label=lab, markersize=4)
    last = max((float(r["epoch"]) for r in history), default=1.0)
    losses = [float(r[k]) for r in history for k in ("train_loss", "val_loss") if r.get(k) is not None]
    if losses and all(math.isfinite(v) for v in losses):  # from 0, with headroom: one epoch does not fill the axis
        axl.set_ylim(0.0, 1.15 * max(losses) or 1.0)
    for a, ylabel in ((ax, "accuracy (%)"), (axl, "loss")):
        a.set_xlabel("epoch")
        a.set_ylabel(ylabel)
        a.set_xlim(-0.2 if before_accuracy is not None else 0.8, last + 0.2)
        a.xaxis.get_major_locator().set_params(integer=True)
        a.grid(alpha=0.3)
        _legend_below(a, ncol=2)
    fig.suptitle(title, fontsize=11)
    return fig
