"""One traced view of a model for pruning: torch-pruning's dependency graph, the forward order and output shapes
of every module, the prunable groups (classifier and ignored parts left out) in forward order, and the attention
heads each group prunes. :func:`~rlprune.pruning.analysis.analyze` describes a model from it and
:func:`~rlprune.pruning.cut.prune` cuts a copy through it, so both read the groups the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning import limits
from rlprune.pruning.attention import Heads, find_heads
from rlprune.pruning.options import IGNORE_KEY, PruneOptions, ignore_hint

# Leaf modules with parameters that need no channel handling of their own (they follow their input's channels).
_PARAM_FREE_OK = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


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
    forward_with_hooks(model, example, hooks)
    return order, shapes


def forward_with_hooks(model: nn.Module, example: torch.Tensor, hooks: list) -> None:
    """One forward pass of ``model`` on ``example`` in eval mode without gradients, removing ``hooks`` afterwards (also
    when the pass fails): the hooks record what they watch, and the model is left as it was (a model handed over in
    train mode keeps its batch-norm running statistics and its mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def custom_math(m: nn.Module, graph: tp.DependencyGraph) -> bool:
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
        if custom_math(m, graph) and not options.ignores(name):
            raise RLPruneError(
                f"layer '{name}' ({type(m).__name__}): torch-pruning has no pruner for this layer type; "
                f"{ignore_hint(name)}, build it from supported layers (conv, linear, norms, attention) or register a "
                "torch-pruning customized pruner for it (see docs/models.md)"
            )


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


def handler_of(group: object, module: nn.Module) -> object:
    """The pruning function a group applies to ``module`` (None when the group does not touch it)."""
    for dep, _ in group:
        if dep.target.module is module:
            return dep.handler
    return None


PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # the layers whose output channels a unit owns


@dataclass
class GraphView:
    """A model traced once: its dependency graph, forward order, output shapes, module names, and its prunable
    groups keyed by unit name (the root module's qualified name), in forward order.

    Build it with :meth:`build`; :func:`~rlprune.pruning.analysis.analyze` reads a model's units from it and
    :func:`~rlprune.pruning.cut.prune` cuts through the view of its copy, so both see the same groups and heads.
    """

    model: nn.Module
    graph: tp.DependencyGraph
    order: dict[nn.Module, int]
    shapes: dict[nn.Module, tuple]
    names: dict[nn.Module, str]
    groups: dict[str, list]
    options: PruneOptions

    @classmethod
    def build(
        cls,
        model: nn.Module,
        example: torch.Tensor,
        options: PruneOptions | None = None,
        time_limit: float | None = None,
    ) -> GraphView:
        """Trace ``model`` on ``example``; refuses unsupported layers (naming the first) and untraceable models,
        and stops (one-line error) when torch-pruning's grouping runs past ``time_limit`` seconds
        (:mod:`rlprune.pruning.limits`)."""
        options = options or PruneOptions()
        hint = f"leave the parts it cannot group as they are with {IGNORE_KEY} (e.g. the attention modules)"
        with limits.time_limit("dependency analysis (torch-pruning)", time_limit, hint):
            graph = build_graph(model, example)
            check_supported(model, graph, options)
            order, shapes = trace_shapes(model, example)
            names = {m: n for n, m in model.named_modules()}
            groups = {names[g[0].dep.target.module]: g for g in sorted_groups(model, graph, order, options)}
        return cls(model, graph, order, shapes, names, groups, options)

    def is_output(self, dep: object) -> bool:
        """Whether a dependency prunes its conv/linear target's outputs (depthwise convs' included)."""
        handler = dep.handler  # type: ignore[attr-defined]
        return isinstance(dep.target.module, PRUNABLE) and (  # type: ignore[attr-defined]
            self.graph.is_out_channel_pruning_fn(handler) or handler == tp.prune_depthwise_conv_out_channels
        )

    def outputs(self, group: object) -> list[nn.Module]:
        """The conv/linear layers whose output channels ``group`` prunes, in forward order (the unit's members)."""
        outs = [dep.target.module for dep, _ in group if self.is_output(dep)]  # type: ignore[attr-defined]
        return sorted(outs, key=lambda m: self.order.get(m, 1 << 30))

    def heads(self, group: object) -> Heads | None:
        """The attention heads ``group`` prunes, or None when it is not an attention's q/k/v group."""
        return find_heads(self.model, self.names, self.outputs(group), self.shapes, self.options)
