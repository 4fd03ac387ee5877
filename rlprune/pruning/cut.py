"""Physical structured pruning: a plan in, a smaller copy of the model out (smaller tensors, not masks)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.attention import Heads, head_scores, set_head_count
from rlprune.pruning.graph import GraphView, unit_groups
from rlprune.pruning.importance import get_criterion
from rlprune.pruning.plan import Plan, kept_channels
from rlprune.pruning.structure import architecture_fingerprint
from rlprune.seeding import one_thread


def _accumulate_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    with one_thread():  # gradient sums, and so the channels kept, do not depend on the thread count
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    model.train(was_training)


def prune(
    model: nn.Module,
    plan: Plan,
    example_input: torch.Tensor,
    *,
    importance: str | None = None,
    round_to: int | None = None,
    calibration: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[nn.Module, Plan]:
    """Return a pruned copy of ``model`` and the plan with the kept channel indices recorded.

    If ``plan.kept`` is set, exactly those channels are kept (rebuilding a saved pruned model); otherwise each unit
    keeps its ``plan.channels[unit]`` most important channels by ``importance`` (default: the plan's criterion).
    Channels coupled through residual additions or depthwise convolutions are removed together; the parts the plan's
    ``options`` ignore (and every unit coupled to them) are left as they are.

    :param example_input: an input batch for tracing (batch size 1 is enough).
    :param round_to: re-derive each unit's kept channels from its ratio, rounded to a multiple of this (hardware
        prefers channel counts like multiples of 8); default: the plan's own channel counts.
    :param calibration: ``(inputs, labels)`` batches, required by gradient-based criteria (``taylor``).
    """
    if plan.granularity != "channel":
        raise RLPruneError(
            f"plan: a weight-level ({plan.granularity}) plan zeroes weights rather than removing channels; apply it "
            "with rlprune.sparsify_plan (rlprune apply/finetune do so by themselves)"
        )
    # Some models cache tensors computed in eval mode (LeViT's attention biases); going through train mode drops
    # them, and a copy that still fails is refused in one line.
    was_training = model.training
    model.train()
    model.train(was_training)
    try:
        pruned = copy.deepcopy(model)
    except (RuntimeError, TypeError) as exc:
        raise RLPruneError(f"model cannot be copied for pruning ({type(exc).__name__}: {str(exc)[:160]})") from None
    if architecture_fingerprint(pruned) != plan.fingerprint:
        raise RLPruneError(
            f"plan: made for another model (fingerprint {plan.fingerprint}, "
            f"this model is {architecture_fingerprint(pruned)})"
        )
    view = GraphView.build(pruned, example_input, plan.options)
    heads = {name: view.heads(g) for name, g in view.groups.items()}
    missing = sorted(set(plan.channels) - set(view.groups))
    if missing:
        raise RLPruneError(f"plan: unit '{missing[0]}' is not a prunable unit of this model")

    if plan.kept is not None:
        kept = _recorded_channels(view, plan.kept, heads)
    else:
        kept = _top_channels(view, plan, heads, importance, round_to, calibration)
    _cut(view, kept, heads)
    # heads units record the heads they kept (as many as their channel count), other units their channel indices
    recorded = {n: _kept_heads(i, heads[n]) if heads.get(n) is not None else i for n, i in kept.items()}
    channels = {n: len(i) for n, i in recorded.items()}
    return pruned, replace(plan, kept=recorded, channels=channels, round_to=round_to or plan.round_to)


def _recorded_channels(
    view: GraphView, recorded: dict[str, list[int]], heads: dict[str, Heads | None]
) -> dict[str, list[int]]:
    """The channel indices a saved plan kept (heads units: the channels of the heads it kept), checked against
    this model."""
    kept: dict[str, list[int]] = {}
    for name, idxs in recorded.items():
        total = view.graph.get_out_channels(names_to_module(view.model, name))
        unit_heads = heads.get(name)
        if unit_heads is not None:
            total = unit_heads.heads  # a heads unit records which heads it kept
        if name not in view.groups or not idxs or len(set(idxs)) != len(idxs) or min(idxs) < 0 or max(idxs) >= total:
            raise RLPruneError(f"plan: unit '{name}': kept channel indices are invalid for this model")
        kept[name] = unit_heads.channel_indices(sorted(idxs)) if unit_heads is not None else sorted(idxs)
    return kept


def _top_channels(
    view: GraphView,
    plan: Plan,
    heads: dict[str, Heads | None],
    importance: str | None,
    round_to: int | None,
    calibration: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
) -> dict[str, list[int]]:
    """The most important channels (or whole heads) of each unit, as many as the plan keeps."""
    criterion = get_criterion(importance or plan.importance)
    if criterion.needs_gradients:
        if calibration is None:
            raise RLPruneError(f"importance '{criterion.name}': needs calibration batches for gradients")
        _accumulate_gradients(view.model, calibration)
    kept: dict[str, list[int]] = {}
    for name, group in view.groups.items():
        total = len(group[0].idxs)
        unit_heads = heads[name]
        if unit_heads is not None:
            kept[name] = _top_heads(criterion(group), unit_heads, plan.channels.get(name, unit_heads.heads))
            continue
        slices = unit_groups(group)
        keep = plan.channels.get(name, total)
        if round_to and name in plan.ratios:
            keep = kept_channels(total, plan.ratios[name], round_to, plan.min_channels, slices)
        if keep >= total:
            kept[name] = list(range(total))
        elif slices > 1:
            kept[name] = _grouped_topk(criterion(group), keep, slices, name)
        else:
            top = torch.topk(criterion(group), keep, largest=True, sorted=False).indices
            kept[name] = sorted(int(i) for i in top)
    if criterion.needs_gradients:
        view.model.zero_grad(set_to_none=True)
    return kept


def _cut(view: GraphView, kept: dict[str, list[int]], heads: dict[str, Heads | None]) -> None:
    """Remove every channel a unit does not keep, through torch-pruning's group of its root."""
    graph = view.graph
    for name, idxs in kept.items():
        root = view.groups[name][0].dep.target.module
        total = graph.get_out_channels(root)
        remove = sorted(set(range(total)) - set(idxs))
        if not remove:
            continue
        if not idxs:
            raise RLPruneError(f"plan: unit '{name}' would lose all of its {total} channels")
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, remove).prune()
        unit_heads = heads[name]
        if unit_heads is not None:
            set_head_count(view.model, unit_heads, len(idxs) // (unit_heads.head_dim * unit_heads.sections))


def _kept_heads(channel_indices: list[int], heads: Heads) -> list[int]:
    """Which heads the kept q/k/v channel indices belong to (read from the first section)."""
    width = heads.heads * heads.head_dim
    return sorted({i // heads.head_dim for i in channel_indices if i < width})


def _top_heads(scores: torch.Tensor, heads: Heads, keep: int) -> list[int]:
    """Channel indices of the ``keep`` most important whole heads (same heads in q, k and v)."""
    keep = max(1, min(heads.heads, keep))
    per = head_scores(scores, heads)
    top = sorted(int(i) for i in torch.topk(per, keep, largest=True, sorted=False).indices)
    return heads.channel_indices(top)


def _grouped_topk(scores: torch.Tensor, keep: int, slices: int, name: str) -> list[int]:
    """Keep the same positions in each of ``slices`` equal slices (what a grouped conv needs): the positions whose
    importance, averaged over the slices, is highest (torch-pruning's convention for channel groups)."""
    if keep % slices:
        raise RLPruneError(f"plan: unit '{name}': keeps {keep} channels, not a multiple of its {slices} conv groups")
    size = scores.numel() // slices
    per = scores.reshape(slices, size).mean(0)
    top = sorted(int(i) for i in torch.topk(per, keep // slices, largest=True, sorted=False).indices)
    return [g * size + i for g in range(slices) for i in top]


def names_to_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise RLPruneError(f"plan: unit '{name}' is not a module of this model") from exc


def rebuild_pruned(dense: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """Reshape a freshly built dense model to a checkpoint's pruned architecture (its plan's kept channels)."""
    plan = Plan.from_dict(meta["plan"], "checkpoint plan")
    if plan.kept is None:
        raise RLPruneError("checkpoint plan: has no kept channel indices; cannot rebuild the pruned model")
    shape = (int(meta.get("in_channels", 3)), int(meta.get("input_size", 32)), int(meta.get("input_size", 32)))
    pruned, _ = prune(dense, plan, torch.zeros(1, *shape))
    return pruned
