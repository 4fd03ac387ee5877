"""Weight-level granularity: one unit per Conv2d/Linear layer, and a per-layer sparsity as the agent's action.

Channel pruning (the default, ``env.granularity: channel``) makes tensors smaller. With ``unstructured`` the agent
chooses, layer by layer, the fraction of that layer's weights to zero by magnitude; with ``nm`` it chooses which
layers follow an N:M pattern (``env.pattern``, 2:4 by default: the 2 largest of every 4 consecutive input weights
kept). Everything else is the channel machinery, unchanged: a layer is a *unit* whose "channels" are its weights, so
a plan's ``channels`` count the weights each layer keeps, the budget is the model's non-zero parameters
(``env.budget: params``), and the environment, rewards, agents, policies and references work as they do for
channels.

Applied, a plan zeroes weights for good (:func:`sparsify_plan`), fine-tuning keeps them zero
(:meth:`~rlprune.pruning.sparsity.SparsityMasks.attach`), and the model is stored as values plus a 1-bit mask
(:func:`~rlprune.pruning.sparsity.save_sparse`). What that buys depends on the hardware: on CPU, PyTorch and ONNX
Runtime run dense kernels, so a sparse model is as fast as the dense one and the gain is the file size; 2:4 runs
faster only on GPUs with sparse tensor cores.

Example::

    structure = rp.weight_structure(model, torch.zeros(1, 3, 32, 32), granularity="unstructured")
    plan = rp.Budget(structure, 0.3, kind="params").uniform_plan()   # 30% of the parameters left non-zero
    masks = rp.sparsify_plan(model, plan)                             # in place
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.analysis import analyze, layer_macs, norm_spread
from rlprune.pruning.graph import trace_shapes
from rlprune.pruning.options import PruneOptions
from rlprune.pruning.sparsity import (
    SparsityMasks,
    nm_allowed,
    nm_mask,
    parse_nm,
    sparse_weights,
    state_keys,
    unstructured_mask,
    weight_slots,
)
from rlprune.pruning.structure import Layer, Structure, Unit, architecture_fingerprint

GRANULARITIES = ("channel", "unstructured", "nm")


def granularity_label(granularity: str, pattern: str = "2:4") -> str:
    """What a plan records: ``channel``, ``unstructured`` or the N:M pattern itself (``2:4``)."""
    if granularity not in GRANULARITIES:
        raise RLPruneError(f"granularity: expected one of {', '.join(GRANULARITIES)}, got '{granularity}'")
    if granularity == "nm":
        parse_nm(pattern)
        return pattern
    return granularity


def nm_of(label: str) -> tuple[int, int] | None:
    """``(n, m)`` for an N:M label, ``None`` for ``channel`` / ``unstructured``."""
    return parse_nm(label) if ":" in label else None


def kind_and_pattern(label: str) -> tuple[str, str]:
    """The ``(granularity, pattern)`` config pair of a label as plans and policies record it (``channel``,
    ``unstructured`` or ``2:4``): the inverse of :func:`granularity_label`."""
    if label in ("channel", "unstructured"):
        return label, "2:4"
    parse_nm(label)  # refuses anything else in one line
    return "nm", label


def _forward_place(
    model: nn.Module, module: nn.Module, attr: str, order: dict[nn.Module, int], shapes: dict[nn.Module, tuple]
) -> tuple[float, int, tuple] | None:
    """Where a weight is used in the forward pass, its MACs (batch 1) and output shape; None if it is not used.

    ``nn.MultiheadAttention`` uses its output projection's weight without calling that ``Linear``, so both of its
    projections are placed at the attention's own call: the fused q/k/v projection first, then the output one. Their
    MACs count every query token (self-attention; a cross-attention's keys and values may be more or fewer tokens).
    """
    if module in order and not isinstance(module, nn.MultiheadAttention):
        return order[module], layer_macs(module, shapes.get(module, ())), shapes.get(module, ())
    if isinstance(module, nn.MultiheadAttention):  # its in_proj_weight: (3E, E) on every token
        owner, after = module, 0.0
    else:  # an output projection, used by its attention
        attentions = (m for m in model.modules() if isinstance(m, nn.MultiheadAttention))
        owner = next((m for m in attentions if m.out_proj is module), None)
        after = 0.5
    if owner is None or owner not in order:
        return None
    out = shapes.get(owner, ())
    return order[owner] + after, _tokens(owner, out) * getattr(module, attr).numel(), out


def _tokens(attention: nn.MultiheadAttention, out: tuple) -> int:
    """Query tokens of one attention call from its output shape: batched ``(L, N, E)`` / ``(N, L, E)`` or unbatched
    ``(L, E)``."""
    if len(out) == 3:
        return int(out[1] if attention.batch_first else out[0])
    return int(out[0]) if len(out) == 2 else 1


SPARSE_IMPORTANCE = "magnitude"  # what weight-level plans keep: the largest weights (recorded as their importance)


def weight_structure(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    granularity: str = "unstructured",
    pattern: str = "2:4",
    ignore: Sequence[str] | None = None,
) -> Structure:
    """The model's sparsifiable layers as units, in forward order, for weight-level plans.

    Every Conv2d and Linear layer the forward pass uses is a unit (``channels`` = its weight count; an
    ``nn.MultiheadAttention``'s fused q/k/v projection and its output projection are two), except those
    ``ignore`` names and, under N:M, those whose input size is not a multiple of M (a 3-channel stem conv): they stay
    dense and count as a fixed cost. Biases and norm parameters are never sparsified.

    :param granularity: ``unstructured`` or ``nm``.
    :param pattern: the N:M pattern for ``nm`` (``2:4``).
    :param ignore: module names or glob patterns to leave dense.
    """
    label = granularity_label(granularity, pattern)
    if label == "channel":
        raise RLPruneError("weight_structure: granularity 'channel' is rlprune.analyze's; expected unstructured or nm")
    nm = nm_of(label)
    options = PruneOptions.of(ignore)
    keys = state_keys(model)  # a layer may be ignored by its name or its weight's (``attn.in_proj_weight``)
    options.check_names(model, also=keys)
    was_training = model.training
    model.eval()
    try:
        order, shapes = trace_shapes(model, example_input)
    finally:
        model.train(was_training)
    named = [
        (name, module, w, _forward_place(model, module, attr, order, shapes))
        for name, (module, attr) in weight_slots(model).items()
        if (w := getattr(module, attr)) is not None
    ]
    named = sorted((item for item in named if item[3] is not None), key=lambda item: item[3][0])
    units: list[Unit] = []
    layers: list[Layer] = []
    for name, module, w, (_, macs, out_shape) in named:
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        ignored = options.ignores(name) or options.ignores(keys[name])
        eligible = w.numel() > 1 and not ignored and (nm is None or nm_allowed(w, nm[1]))
        if eligible:
            conv = isinstance(module, nn.Conv2d)
            kind = "depthwise" if depthwise else "conv" if conv else ("mlp" if len(out_shape) >= 3 else "linear")
            units.append(
                Unit(
                    index=len(units),
                    name=name,
                    kind=kind,
                    channels=int(w.numel()),
                    in_channels=int(module.in_channels if conv else w.shape[1]),
                    kernel=int(module.kernel_size[0]) if conv else 1,
                    stride=int(module.stride[0]) if conv else 1,
                    fmap=int(out_shape[-1]) if conv and len(out_shape) >= 3 else 1,
                    params=int(w.numel()),
                    macs=int(macs),
                    coupled=1,
                    members=(name,),
                    norm_spread=norm_spread([SimpleNamespace(weight=w)], int(w.shape[0])),  # a bare weight
                )
            )
        # bias 0: biases are never sparsified, so they stay in the fixed part of the parameter count
        layers.append(Layer(name, int(macs), int(w.numel()), 0, len(units) - 1 if eligible else None, None, depthwise))
    if not units:
        what = f"layer whose input size is a multiple of {nm[1]}" if nm else "layer"
        raise RLPruneError(f"weight_structure: the model has no Conv2d/Linear {what} to sparsify")
    return Structure(
        units=units,
        layers=layers,
        total_macs=max(1, sum(la.macs for la in layers)),
        total_params=sum(p.numel() for p in model.parameters()),
        fingerprint=f"{architecture_fingerprint(model)}:{label}",
        input_shape=tuple(example_input.shape[1:]),
        extra={"granularity": granularity, "pattern": label},
        options=options,
    )


def structure_for(
    model: nn.Module,
    example_input: torch.Tensor,
    granularity: str = "channel",
    *,
    ignore: Sequence[str] | None = None,
    heads: Mapping[str, int | str] | None = None,
) -> Structure:
    """The structure plans of this granularity are made on: :func:`rlprune.analyze`'s channel units for
    ``channel``, :func:`weight_structure`'s layers for ``unstructured`` or an N:M label (``2:4``, as a plan or a
    policy records it)."""
    if granularity == "channel":
        return analyze(model.eval(), example_input, ignore=ignore, heads=heads)
    if heads:
        raise RLPruneError("heads: head counts are for channel pruning; a weight-level plan sparsifies layers")
    kind, pattern = kind_and_pattern(granularity)
    return weight_structure(model, example_input, granularity=kind, pattern=pattern, ignore=ignore)


def sparsify_plan(model: nn.Module, plan: object) -> SparsityMasks:
    """Zero ``model``'s weights in place as a weight-level plan says and return the masks (keep them attached
    while fine-tuning, :meth:`~rlprune.pruning.sparsity.SparsityMasks.attach`, so that the zeros stay zero).

    Unstructured: each layer keeps its ``plan.channels`` largest-magnitude weights. N:M: each layer with a non-zero
    ratio follows the pattern.
    """
    from rlprune.pruning.plan import Plan

    assert isinstance(plan, Plan)
    label = plan.granularity
    if label == "channel":
        raise RLPruneError("sparsify_plan: a channel plan prunes channels (rlprune.prune), it does not sparsify")
    expected = f"{architecture_fingerprint(model)}:{label}"
    if plan.fingerprint != expected:
        raise RLPruneError(f"plan: made for another model or granularity ({plan.fingerprint}, expected {expected})")
    weights = sparse_weights(model)
    unknown = sorted(set(plan.channels) - set(weights))
    if unknown:
        raise RLPruneError(f"plan: no Conv2d/Linear/attention projection named '{unknown[0][:60]}' in the model")
    nm = nm_of(label)
    masks: dict[str, torch.Tensor] = {}
    for name, keep in plan.channels.items():
        w = weights[name]
        if keep >= w.numel():
            continue
        if nm is None:
            masks[name] = unstructured_mask(w, 1.0 - keep / w.numel())
        elif keep * nm[1] == w.numel() * nm[0] and nm_allowed(w, nm[1]):
            masks[name] = nm_mask(w, *nm)
        else:
            raise RLPruneError(f"plan: layer '{name[:60]}' keeps {keep} of {w.numel()} weights, not {label} or dense")
        if int(masks[name].sum()) != keep:  # the plan's count is what the mask keeps (same rounding)
            raise RLPruneError(f"plan: layer '{name[:60]}' keeps {keep} weights, its mask {int(masks[name].sum())}")
    result = SparsityMasks(masks, label)
    result.apply(model)
    return result


__all__ = [
    "GRANULARITIES",
    "SPARSE_IMPORTANCE",
    "granularity_label",
    "kind_and_pattern",
    "nm_of",
    "sparsify_plan",
    "structure_for",
    "weight_structure",
]
