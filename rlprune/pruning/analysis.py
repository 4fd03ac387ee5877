"""Analysis: a model's prunable units with their features, its layers' costs, checked by pruning a copy by half."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.attention import Heads
from rlprune.pruning.graph import PRUNABLE, GraphView, custom_math, forward_with_hooks, handler_of, unit_groups
from rlprune.pruning.options import PruneOptions, ignore_hint
from rlprune.pruning.structure import Layer, Structure, Unit, architecture_fingerprint

log = logging.getLogger("rlprune.pruning.analysis")


def layer_macs(module: nn.Module, out_shape: tuple) -> int:
    """Multiply-accumulates of one conv or linear call (batch 1), bias excluded, as FlopCounterMode counts them."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        spatial = 1
        for s in out_shape[:1] + out_shape[2:]:  # the leading dim: 1 (batch), or patches folded into the batch
            spatial *= s
        k = 1
        for s in module.kernel_size:
            k *= s
        return spatial * module.out_channels * (module.in_channels // module.groups) * k
    if isinstance(module, nn.MultiheadAttention):
        tokens = int(out_shape[1] if module.batch_first else out_shape[0]) if len(out_shape) == 3 else 1
        e, kd, vd = module.embed_dim, module.kdim, module.vdim
        # q/k/v and output projections, then q·kᵀ and attn·v
        return tokens * e * (e + kd + vd) + tokens * e * e + 2 * tokens * tokens * e
    if isinstance(module, nn.Linear):
        rows = 1
        for s in out_shape[:-1]:  # batch 1 (or patches folded into the batch, as MobileViT does) x tokens
            rows *= s
        return rows * module.in_features * module.out_features
    return 0


def analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    trial: bool = True,
    ignore: Sequence[str] | None = None,
    heads: Mapping[str, int | str] | None = None,
    time_limit: float | None = None,
) -> Structure:
    """Prunable units of ``model`` in forward order with their features; raises on unsupported layers.

    :param example_input: one input batch of the shape the model expects (batch size 1 is enough).
    :param trial: also prune a copy by half and run it, refusing (before any work) a model whose pruning fails.
    :param ignore: module or parameter names (or glob patterns) to leave as they are, with every unit coupled to
        them: what rlprune cannot prune becomes a fixed cost instead of a refusal (config key ``prune.ignore``).
    :param heads: attention module name (or pattern) -> head count, or the name of the attribute holding it, for
        attentions whose head count rlprune cannot find (config key ``prune.heads``).
    :param time_limit: seconds torch-pruning's dependency analysis may take before it is stopped with an error
        (default ``$RLPRUNE_ANALYSIS_TIME_LIMIT`` or 300; 0: no limit): some graphs make it search for minutes.
    """
    options = PruneOptions.of(ignore, heads)
    view = GraphView.build(model, example_input, options, time_limit)
    if not view.groups:
        raise RLPruneError(
            "model has no prunable units (no conv/linear layer whose outputs can be pruned"
            + (", outside the ignored parts" if options.ignore else "")
            + ")"
        )
    wiring = _Wiring()
    units = [_unit(view, idx, group, wiring) for idx, group in enumerate(view.groups.values())]
    layers = _layers(view, wiring) + _attention_matmuls(wiring) + _norm_layers(view)
    if options.ignore:  # ignored hand-made layers: their matrix products are a fixed cost
        custom = [m for n, m in model.named_modules() if options.ignores(n) and custom_math(m, view.graph)]
        for m, macs in _own_macs(model, example_input, custom).items():
            layers.append(Layer(f"{view.names[m]}:ignored", macs, 0, 0, None, None, False))
    structure = Structure(
        units=units,
        layers=layers,
        total_macs=sum(la.macs for la in layers),
        total_params=sum(p.numel() for p in model.parameters()),
        fingerprint=architecture_fingerprint(model),
        input_shape=tuple(example_input.shape[1:]),
        options=options,
    )
    if trial:
        _trial_prune(model, example_input, structure)
    return structure


@dataclass
class _Wiring:
    """Which unit prunes each layer's outputs and inputs (and which input channels, for concatenations), and the
    attentions found, gathered while the units are read."""

    out_unit: dict[nn.Module, int] = field(default_factory=dict)
    in_unit: dict[nn.Module, int] = field(default_factory=dict)
    in_segments: dict[nn.Module, dict[int, set[int]]] = field(default_factory=dict)
    attentions: list[tuple[Heads, int]] = field(default_factory=list)


def _unit(view: GraphView, idx: int, group: list, wiring: _Wiring) -> Unit:
    """The unit one dependency group makes, recording in ``wiring`` the layers it prunes."""
    graph, names, shapes = view.graph, view.names, view.shapes
    root = group[0].dep.target.module
    touched = {dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)}
    for dep, idxs in group:
        m = dep.target.module
        if view.is_output(dep):
            wiring.out_unit[m] = idx
        elif isinstance(m, PRUNABLE) and graph.is_in_channel_pruning_fn(dep.handler):
            wiring.in_unit[m] = idx
            wiring.in_segments.setdefault(m, {}).setdefault(idx, set()).update(int(i) for i in idxs)
    owned = view.outputs(group)
    first = owned[0] if owned else root
    members = owned or [root]
    heads = view.heads(group)
    # A unit is as "depthwise", as wide-kerneled and as strided as its most so member: in MobileNetV2 the group
    # is rooted at the 1x1 expansion but also owns the 3x3 (possibly stride-2) depthwise conv after it.
    depthwise = any(
        isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels == m.in_channels for m in members
    )
    kind = "linear" if isinstance(first, nn.Linear) else ("depthwise" if depthwise else "conv")
    if heads is not None:
        kind = "heads"
        wiring.attentions.append((heads, idx))
    elif kind == "linear" and len(shapes.get(first, ())) >= 3:
        kind = "mlp"  # a Linear applied per token: a transformer block's hidden neurons
    slices = unit_groups(group)
    channels = int(graph.get_out_channels(root))
    if channels % slices:
        raise RLPruneError(
            f"layer '{names[root]}': {channels} channels feed grouped convolutions with {slices} groups in all; "
            f"channels must divide evenly; {ignore_hint(names[root])}"
        )
    fmaps = [int(shapes[m][-1]) for m in members if len(shapes.get(m, ())) >= 3]
    owned_params = sum(
        p.numel()
        for m in touched
        if graph.is_out_channel_pruning_fn(handler_of(group, m))
        for p in m.parameters(recurse=False)
    )
    return Unit(
        index=idx,
        name=names[root],
        kind=kind,
        channels=heads.heads if heads is not None else channels,
        in_channels=int(getattr(first, "in_channels", getattr(first, "in_features", 0))),
        kernel=max((int(m.kernel_size[0]) for m in members if hasattr(m, "kernel_size")), default=1),
        stride=max((int(m.stride[0]) for m in members if hasattr(m, "stride")), default=1),
        fmap=min(fmaps, default=1),
        params=int(owned_params),
        macs=sum(layer_macs(m, shapes.get(m, ())) for m in owned) + (heads.matmul_macs() if heads else 0),
        coupled=len(touched),
        members=tuple(names[m] for m in owned),
        groups=slices,
        head_dim=heads.head_dim if heads is not None else 0,
        norm_spread=norm_spread(owned, *((heads.heads, heads.head_dim) if heads is not None else (channels, 1))),
    )


def _layers(view: GraphView, wiring: _Wiring) -> list[Layer]:
    """Every conv, linear and attention layer called, in forward order, with the units that prune it."""
    mha_unit = {
        dep.target.module: i
        for i, g in enumerate(view.groups.values())
        for dep, _ in g
        if isinstance(dep.target.module, nn.MultiheadAttention)
    }
    layers = []
    called = (m for m in view.shapes if isinstance(m, (*PRUNABLE, nn.MultiheadAttention)))
    for m in sorted(called, key=lambda m: view.order[m]):
        if isinstance(m, nn.MultiheadAttention):
            layers.extend(_mha_layers(m, view.names[m], view.shapes[m], mha_unit.get(m)))
            continue
        depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels
        width = int(getattr(m, "in_channels", getattr(m, "in_features", 0)))
        segments = tuple(sorted((u, len(ix)) for u, ix in wiring.in_segments.get(m, {}).items()))
        if depthwise or (len(segments) == 1 and segments[0][1] == width):
            segments = ()  # one unit provides all inputs: ``in_unit`` says it all
        layers.append(
            Layer(
                name=view.names[m],
                macs=layer_macs(m, view.shapes[m]),
                weight=m.weight.numel(),
                bias=m.bias.numel() if m.bias is not None else 0,
                out_unit=wiring.out_unit.get(m),
                in_unit=None if depthwise else wiring.in_unit.get(m),
                depthwise=depthwise,
                in_units=segments,
                in_channels=width if segments else 0,
            )
        )
    return layers


def _attention_matmuls(wiring: _Wiring) -> list[Layer]:
    """q·kᵀ and attn·v of each attention: they scale with the heads kept."""
    return [Layer(f"{h.module}:q@k,attn@v", h.matmul_macs(), 0, 0, idx, None, False) for h, idx in wiring.attentions]


def _norm_layers(view: GraphView) -> list[Layer]:
    """Normalization layers' affine parameters, which follow the unit that prunes their channels (as a bias does),
    and parameters outside layers (class token, position embeddings, layer scale), which shrink along their pruned
    dimension."""
    unit_of = {dep.target.module: i for i, g in enumerate(view.groups.values()) for dep, _ in g}
    layers = []
    for m in view.model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            layers.append(Layer(view.names[m], 0, 0, m.weight.numel() + m.bias.numel(), unit_of.get(m), None, False))
        elif isinstance(m, nn.LayerNorm | nn.GroupNorm | nn.Embedding) and m in unit_of:
            own = sum(p.numel() for p in m.parameters(recurse=False))
            if own:
                layers.append(Layer(view.names[m], 0, 0, own, unit_of[m], None, False))
    for unwrapped in view.graph.unwrapped_parameters:
        param = unwrapped.parameters
        if param in unit_of:
            name = view.graph._param_to_name.get(param, "?")  # torch-pruning's own name map
            layers.append(Layer(name, 0, 0, param.numel(), unit_of[param], None, False))
    return layers


def norm_spread(layers: list[nn.Module], slots: int, block: int = 1) -> float:
    """Coefficient of variation of the per-slot L2 norms of ``layers``' output weights.

    :param slots: the unit's pruning slots (channels, or heads).
    :param block: output rows per slot and section (an attention's head dimension; 1 for channels): rows are read as
        ``sections x slots x block``, the layout of fused q|k|v projections. Layers whose outputs do not split that
        way are skipped; 0 when none is left or every norm is 0.
    """
    if slots <= 0 or block <= 0:
        return 0.0
    total = torch.zeros(slots, dtype=torch.float64)
    used = False
    with torch.no_grad():
        for m in layers:
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() < 1 or w.shape[0] % (slots * block):
                continue
            sq = w.detach().double().reshape(w.shape[0], -1).pow(2).sum(1)
            total += sq.reshape(-1, slots, block).sum(dim=(0, 2))
            used = True
    norms = total.sqrt()
    mean = float(norms.mean()) if used else 0.0
    if mean <= 0 or not math.isfinite(mean):
        return 0.0
    return float(norms.std(unbiased=False)) / mean


def _trial_prune(model: nn.Module, example: torch.Tensor, structure: Structure) -> None:
    """Prune every unit by half and run the result once, so a block the graph misreads is refused now, in one
    line, rather than as a traceback in the middle of a search; a cost prediction that misses the pruned model's
    measured MACs by more than 1% is logged."""
    from rlprune.cost.macs import count_macs, predict_costs
    from rlprune.pruning.cut import prune
    from rlprune.pruning.plan import Plan

    plan = Plan.from_ratios(structure, [0.5] * len(structure.units))
    try:
        pruned, done = prune(model, plan, example)
        with torch.no_grad():
            pruned.eval()(example)
    except RLPruneError:
        raise
    except Exception as exc:  # whatever the misread block raises
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise RLPruneError(
            f"model: pruned by half, it fails ({type(exc).__name__}: {text}); it has a block rlprune cannot prune "
            "yet: give an attention's head count with prune.heads, or leave the block unpruned with prune.ignore "
            "(Python: heads=, ignore=; docs/models.md lists the supported blocks and how to help)"
        ) from None
    predicted = predict_costs(structure, done.channels)[0]
    measured = count_macs(pruned, structure.input_shape, dtype=example.dtype)
    if abs(predicted - measured) > 0.01 * max(1, measured):
        log.warning("cost model predicts %d MACs for a half-pruned model that measures %d", predicted, measured)


def _own_macs(model: nn.Module, example: torch.Tensor, modules: list[nn.Module]) -> dict[nn.Module, int]:
    """MACs counted inside each of ``modules`` during one forward pass (FlopCounterMode's running total, read when
    the module starts and ends), as the measured count will see them."""
    from torch.utils.flop_counter import FlopCounterMode

    if not modules:
        return {}
    own: dict[nn.Module, int] = {}
    start: dict[nn.Module, int] = {}
    with FlopCounterMode(display=False) as counter:

        def before(m: nn.Module, _inp: object) -> None:
            start[m] = counter.get_total_flops()

        def after(m: nn.Module, _inp: object, _out: object) -> None:
            own.setdefault(m, (counter.get_total_flops() - start[m]) // 2)

        hooks = [h for m in modules for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
        forward_with_hooks(model, example, hooks)
    return {m: n for m, n in own.items() if n}


def _mha_layers(m: nn.MultiheadAttention, name: str, shape: tuple, unit: int | None) -> list[Layer]:
    """An ``nn.MultiheadAttention`` as two layers: its projections (input and output are both the embedding, one
    unit, so they scale with its kept fraction squared) and q·kᵀ / attn·v (linear in the kept head dimensions)."""
    tokens = int(shape[1] if m.batch_first else shape[0]) if len(shape) == 3 else 1
    matmul = 2 * tokens * tokens * m.embed_dim
    weights = [p for p in (m.in_proj_weight, m.q_proj_weight, m.k_proj_weight, m.v_proj_weight) if p is not None]
    weight = sum(p.numel() for p in weights) + m.out_proj.weight.numel()
    bias = sum(p.numel() for p in m.parameters()) - weight
    return [
        Layer(name, layer_macs(m, shape) - matmul, weight, bias, unit, unit, False),
        Layer(f"{name}:q@k,attn@v", matmul, 0, 0, unit, None, False),
    ]
