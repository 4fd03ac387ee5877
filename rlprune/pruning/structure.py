"""Which channels of a network can be pruned together: the dependency groups of torch-pruning's
``DependencyGraph``, in forward order, with the per-unit features the environment observes.

Facts about torch-pruning 1.6.1 this module works around: ``get_all_groups`` does not yield groups in forward order
(we sort by the first module of each group the forward pass reaches), and the graph cannot be deep-copied (it is
rebuilt on each copy of the model, which takes tens of milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.attention import Heads, find_heads
from rlprune.pruning.options import PruneOptions, ignore_hint

log = logging.getLogger("rlprune.pruning")

# Leaf modules with parameters that need no channel handling of their own (they follow their input's channels).
_PARAM_FREE_OK = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class Unit:
    """A prunable unit: one dependency group, pruned as a whole along its root's output channels.

    :param index: position in forward order.
    :param name: qualified name of the root module (the group's key in a plan).
    :param kind: ``conv``, ``depthwise``, ``linear``, ``heads`` (whole attention heads) or ``mlp`` (hidden neurons of a
        token-wise Linear pair, as in a transformer block).
    :param channels: prunable channels of the group.
    :param in_channels: input channels of the root module.
    :param kernel: kernel size of the root (1 for linear).
    :param stride: stride of the root (1 for linear).
    :param fmap: output feature-map side of the root (1 for linear).
    :param params: parameters of the modules whose outputs this unit prunes.
    :param macs: MACs of the conv/linear layers whose outputs this unit prunes.
    :param coupled: number of modules whose weights change when this unit is pruned.
    :param members: names of the conv/linear layers whose output channels belong to this unit.
    :param groups: the unit keeps a multiple of this many channels, the same positions in each of its ``groups``
        equal slices (its channels feed or leave grouped convolutions; 1 for everything else, depthwise included).
    :param head_dim: for ``kind == "heads"`` (an attention's q/k/v outputs), the channels per head: ``channels``
        then counts heads, the unit's pruning step; 0 otherwise.
    :param norm_spread: coefficient of variation (std / mean) of the L2 norms of the unit's output channels (of its
        heads, for attention), over all its member layers: a cheap redundancy signal at analysis time. Near 0, every
        channel carries as much weight as the next; a large spread means that magnitude pruning finds weak channels.
    """

    index: int
    name: str
    kind: str
    channels: int
    in_channels: int
    kernel: int
    stride: int
    fmap: int
    params: int
    macs: int
    coupled: int
    members: tuple[str, ...]
    groups: int = 1
    head_dim: int = 0
    norm_spread: float = 0.0


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer, for predicting a plan's MACs and parameters without pruning.

    ``out_unit`` / ``in_unit`` index the units that prune its output / input channels (``None``: never pruned).
    When its inputs come from several units (a ``torch.cat`` of branches) or only partly from one, ``in_units``
    lists ``(unit, input channels it provides)`` and ``in_channels`` the layer's input width; the rest is fixed.
    """

    name: str
    macs: int
    weight: int
    bias: int
    out_unit: int | None
    in_unit: int | None
    depthwise: bool
    in_units: tuple[tuple[int, int], ...] = ()
    in_channels: int = 0


@dataclass
class Structure:
    """Prunable units of a model in forward order, its layers and totals, and a fingerprint of its architecture."""

    units: list[Unit]
    layers: list[Layer]
    total_macs: int
    total_params: int
    fingerprint: str
    input_shape: tuple[int, ...]
    extra: dict[str, object] = field(default_factory=dict)
    # what the user told analysis (``prune.ignore`` / ``prune.heads``); plans made from this structure carry it
    options: PruneOptions = field(default_factory=PruneOptions)

    @property
    def granularity(self) -> str:
        """What a unit is: ``channel`` (output channels of a group), or for weight-level structures
        (:mod:`rlprune.pruning.weights`) ``unstructured`` or an N:M pattern label such as ``2:4``."""
        return str(self.extra.get("pattern", "channel"))

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise RLPruneError(f"unit '{name}': not a prunable unit of this model")

    def to_dict(self) -> dict[str, object]:
        return {
            "units": [asdict(u) for u in self.units],
            "total_macs": self.total_macs,
            "total_params": self.total_params,
            "fingerprint": self.fingerprint,
        }


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's and buffer's name and shape: equal for models of identical architecture."""
    items = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def find_classifier(model: nn.Module, order: dict[nn.Module, int] | None = None) -> nn.Module:
    """The layer whose outputs are the model's predictions, so they are never pruned.

    With the forward ``order`` it is the last conv/linear layer called (right for conv classifiers after Linear
    layers in SE blocks); without it, the last Linear (or conv) in registration order.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    if not layers:
        raise RLPruneError("model has no Linear or Conv layer to serve as the classifier")
    if order:
        called = [m for m in layers if m in order]
        if called:
            return max(called, key=lambda m: order[m])
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    return (linear or layers)[-1]


def trace_shapes(model: nn.Module, example: torch.Tensor) -> tuple[dict[nn.Module, int], dict[nn.Module, tuple]]:
    """Forward order of every module's first call and its output shape."""
    order: dict[nn.Module, int] = {}
    shapes: dict[nn.Module, tuple] = {}
    hooks = []

    def hook(mod: nn.Module, _inp: object, out: object) -> None:
        if mod not in order:
            order[mod] = len(order)
            if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
                out = out[0]  # e.g. nn.MultiheadAttention returns (output, weights)
            if isinstance(out, torch.Tensor):
                shapes[mod] = tuple(out.shape)

    for m in model.modules():
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order, shapes


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


def _custom_math(m: nn.Module, graph: tp.DependencyGraph) -> bool:
    """A leaf layer with its own weight matrix (a hand-made conv/linear) that torch-pruning has no pruner for."""
    own = list(m.parameters(recurse=False))
    if not own or isinstance(m, _PARAM_FREE_OK) or any(True for _ in m.children()):
        return False
    if not any(sum(d > 1 for d in p.shape) > 1 for p in own):
        return False  # vectors only: scales and biases, pruned along their channels
    pruner = graph.get_pruner_of_module(m)
    return pruner is None or isinstance(pruner, tp.ops.ElementWisePruner)


def check_supported(model: nn.Module, graph: tp.DependencyGraph, options: PruneOptions | None = None) -> None:
    """Refuse models with parameterised layers torch-pruning has no handler for, naming the first one, before any
    pruning work (layers the user ignores are left alone instead)."""
    options = options or PruneOptions()
    options.check_names(model)
    for name, m in model.named_modules():
        if _custom_math(m, graph) and not options.ignores(name):
            raise RLPruneError(
                f"layer '{name}' ({type(m).__name__}): torch-pruning has no pruner for this layer type; "
                f"{ignore_hint(name)}, build it from supported layers (conv, linear, norms, attention) or register a "
                "torch-pruning customized pruner for it (see docs/models.md)"
            )
    # Parameters outside layers (class tokens, position embeddings, layer-scale vectors) are pruned along their last
    # non-singleton dimension with the channels they meet (torch-pruning's ``unwrapped_parameters``).


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning dependency graph (in train mode, with gradients, as tracing needs)."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:  # tracing failures come in many types
        raise RLPruneError(f"model cannot be traced for pruning ({type(exc).__name__}: {exc})") from exc
    finally:
        model.train(was_training)
    return graph


def sorted_groups(
    model: nn.Module, graph: tp.DependencyGraph, order: dict[nn.Module, int], options: PruneOptions | None = None
) -> list:
    """Dependency groups (classifier outputs excluded, and every group that touches a module or parameter the user
    ignores), sorted by the forward position of their first member."""
    classifier = find_classifier(model, order)
    groups = list(graph.get_all_groups(ignored_layers=[classifier]))
    if options is not None and options.ignore:
        names: dict[object, str] = {m: n for n, m in model.named_modules()}
        names.update({p: n for n, p in model.named_parameters()})  # unwrapped parameters are group members too
        groups = [g for g in groups if not any(options.ignores(names.get(dep.target.module, "")) for dep, _ in g)]

    def first_call(group: object) -> int:
        return min(order.get(dep.target.module, 1 << 30) for dep, _ in group)

    return sorted(groups, key=first_call)


def analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    trial: bool = True,
    ignore: Sequence[str] | None = None,
    heads: Mapping[str, int | str] | None = None,
) -> Structure:
    """Prunable units of ``model`` in forward order with their features; raises on unsupported layers.

    :param example_input: one input batch of the shape the model expects (batch size 1 is enough).
    :param trial: also prune a copy by half and run it, refusing (before any work) a model whose pruning fails.
    :param ignore: module or parameter names (or glob patterns) to leave as they are, with every unit coupled to
        them: what rlprune cannot prune becomes a fixed cost instead of a refusal (config key ``prune.ignore``).
    :param heads: attention module name (or pattern) -> head count, or the name of the attribute holding it, for
        attentions whose head count rlprune cannot find (config key ``prune.heads``).
    """
    options = PruneOptions.of(ignore, heads)
    graph = build_graph(model, example_input)
    check_supported(model, graph, options)
    order, shapes = trace_shapes(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    groups = sorted_groups(model, graph, order, options)
    if not groups:
        raise RLPruneError(
            "model has no prunable units (no conv/linear layer whose outputs can be pruned"
            + (", outside the ignored parts" if options.ignore else "")
            + ")"
        )

    out_unit: dict[nn.Module, int] = {}
    in_unit: dict[nn.Module, int] = {}
    in_segments: dict[nn.Module, dict[int, set[int]]] = {}
    attention_layers: list[tuple[Heads, int]] = []
    units: list[Unit] = []
    for idx, group in enumerate(groups):
        root = group[0].dep.target.module
        touched = {dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)}
        owned = []
        for dep, idxs in group:
            m = dep.target.module
            if not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
                continue
            if graph.is_out_channel_pruning_fn(dep.handler) or dep.handler == tp.prune_depthwise_conv_out_channels:
                out_unit[m] = idx
                owned.append(m)
            elif graph.is_in_channel_pruning_fn(dep.handler):
                in_unit[m] = idx
                in_segments.setdefault(m, {}).setdefault(idx, set()).update(int(i) for i in idxs)
        owned.sort(key=lambda m: order.get(m, 1 << 30))
        first = owned[0] if owned else root
        members = owned or [root]
        heads = find_heads(model, names, owned, shapes, options)
        # A unit is as "depthwise", as wide-kerneled and as strided as its most so member: in MobileNetV2 the group
        # is rooted at the 1x1 expansion but also owns the 3x3 (possibly stride-2) depthwise conv after it.
        depthwise = any(
            isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels == m.in_channels for m in members
        )
        kind = "linear" if isinstance(first, nn.Linear) else ("depthwise" if depthwise else "conv")
        if heads is not None:
            kind = "heads"
        elif kind == "linear" and len(shapes.get(first, ())) >= 3:
            kind = "mlp"  # a Linear applied per token: a transformer block's hidden neurons
        slices = unit_groups(group)
        channels = int(graph.get_out_channels(root))
        if channels % slices:
            raise RLPruneError(
                f"layer '{names[root]}': {channels} channels feed grouped convolutions with {slices} groups in all; "
                f"channels must divide evenly; {ignore_hint(names[root])}"
            )
        kernel = max((int(m.kernel_size[0]) for m in members if hasattr(m, "kernel_size")), default=1)
        stride = max((int(m.stride[0]) for m in members if hasattr(m, "stride")), default=1)
        fmaps = [int(shapes[m][-1]) for m in members if len(shapes.get(m, ())) >= 3]
        owned_params = sum(
            p.numel()
            for m in touched
            if graph.is_out_channel_pruning_fn(_handler_of(group, m))
            for p in m.parameters(recurse=False)
        )
        units.append(
            Unit(
                index=idx,
                name=names[root],
                kind=kind,
                channels=heads.heads if heads is not None else channels,
                in_channels=int(getattr(first, "in_channels", getattr(first, "in_features", 0))),
                kernel=kernel,
                stride=stride,
                fmap=min(fmaps, default=1),
                params=int(owned_params),
                macs=sum(layer_macs(m, shapes.get(m, ())) for m in owned) + (heads.matmul_macs() if heads else 0),
                coupled=len(touched),
                members=tuple(names[m] for m in owned),
                groups=slices,
                head_dim=heads.head_dim if heads is not None else 0,
                norm_spread=norm_spread(
                    owned, *((heads.heads, heads.head_dim) if heads is not None else (channels, 1))
                ),
            )
        )
        if heads is not None:
            attention_layers.append((heads, idx))

    mha_unit = {
        dep.target.module: i
        for i, g in enumerate(groups)
        for dep, _ in g
        if isinstance(dep.target.module, nn.MultiheadAttention)
    }
    layers = []
    for m in sorted(
        (m for m in shapes if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear | nn.MultiheadAttention)),
        key=lambda m: order[m],
    ):
        if isinstance(m, nn.MultiheadAttention):
            layers.extend(_mha_layers(m, names[m], shapes[m], mha_unit.get(m)))
            continue
        depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels
        o = out_unit.get(m)
        bias = m.bias.numel() if m.bias is not None else 0
        width = int(getattr(m, "in_channels", getattr(m, "in_features", 0)))
        segments = tuple(sorted((u, len(ix)) for u, ix in in_segments.get(m, {}).items()))
        if depthwise or (len(segments) == 1 and segments[0][1] == width):
            segments = ()  # one unit provides all inputs: ``in_unit`` says it all
        layers.append(
            Layer(
                name=names[m],
                macs=layer_macs(m, shapes[m]),
                weight=m.weight.numel(),
                bias=bias,
                out_unit=o,
                in_unit=None if depthwise else in_unit.get(m),
                depthwise=depthwise,
                in_units=segments,
                in_channels=width if segments else 0,
            )
        )
    # q·kᵀ and attn·v of each attention: they scale with the heads kept.
    for heads, idx in attention_layers:
        layers.append(Layer(f"{heads.module}:q@k,attn@v", heads.matmul_macs(), 0, 0, idx, None, False))
    # Normalization layers' affine parameters follow the unit that prunes their channels (as a bias does).
    bn_unit = {dep.target.module: i for i, g in enumerate(groups) for dep, _ in g}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            layers.append(
                Layer(
                    name=names[m],
                    macs=0,
                    weight=0,
                    bias=m.weight.numel() + m.bias.numel(),
                    out_unit=bn_unit.get(m),
                    in_unit=None,
                    depthwise=False,
                )
            )
        elif isinstance(m, nn.LayerNorm | nn.GroupNorm | nn.Embedding) and m in bn_unit:
            own = sum(p.numel() for p in m.parameters(recurse=False))
            if own:
                layers.append(Layer(names[m], 0, 0, own, bn_unit[m], None, False))
    # Parameters outside layers (class token, position embeddings, layer scale) shrink along their pruned dimension.
    for unwrapped in graph.unwrapped_parameters:
        param = unwrapped.parameters
        if param in bn_unit:
            layers.append(Layer(graph._param_to_name.get(param, "?"), 0, 0, param.numel(), bn_unit[param], None, False))
    if options.ignore:  # ignored hand-made layers: their matrix products are a fixed cost
        custom = [m for n, m in model.named_modules() if options.ignores(n) and _custom_math(m, graph)]
        for m, macs in _own_macs(model, example_input, custom).items():
            layers.append(Layer(f"{names[m]}:ignored", macs, 0, 0, None, None, False))
    total_params = sum(p.numel() for p in model.parameters())
    structure = Structure(
        units=units,
        layers=layers,
        total_macs=sum(la.macs for la in layers),
        total_params=total_params,
        fingerprint=architecture_fingerprint(model),
        input_shape=tuple(example_input.shape[1:]),
        options=options,
    )
    if trial:
        _trial_prune(model, example_input, structure)
    return structure


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
    from rlprune.pruning.plan import Plan
    from rlprune.pruning.prune import prune

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
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in hooks:
                h.remove()
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


def is_grouped_conv(m: nn.Module) -> bool:
    """A convolution with ``groups`` > 1 that is not depthwise (depthwise convs prune their groups with them)."""
    return isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and m.groups > 1 and m.groups != m.out_channels


def unit_groups(group: object) -> int:
    """How many equal slices a unit's channels are cut into by the grouped convolutions it touches (lcm of their
    ``groups``): a pruned unit keeps the same positions in every slice, so every grouped conv stays valid."""
    g = 1
    for dep, _ in group:
        m = dep.target.module
        if is_grouped_conv(m):
            g = math.lcm(g, int(m.groups))
        elif isinstance(m, nn.MultiheadAttention):
            g = math.lcm(g, int(m.num_heads))  # its embedding is pruned as head dimensions, equal in every head
    return g


def _handler_of(group: object, module: nn.Module) -> object:
    for dep, _ in group:
        if dep.target.module is module:
            return dep.handler
    return None
