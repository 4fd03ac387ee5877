from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune.cost.budget import uniform_plan
from rlprune.cost.macs import count_macs, count_params, predict_costs
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_checkpoint, save_checkpoint
from rlprune.models import build_model
from rlprune.pruning import CRITERIA, Plan, analyze, prune
from rlprune.pruning.graph import build_graph

X = torch.zeros(1, 3, 32, 32)
# Small widths keep the tests fast; the structure (residuals, depthwise) is what matters.
SMALL = {
    "resnet20": {},
    "resnet56": {"width": 8},
    "vgg16_bn": {},
    "mobilenetv2": {"width_mult": 0.25},
    "mobilenetv1": {"width_mult": 0.25},
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name]).eval()
    # Non-trivial BN statistics so that a wrong channel mapping changes outputs.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def test_units_are_in_forward_order_and_exclude_the_classifier() -> None:
    model = _model("resnet20")
    s = analyze(model, X)
    assert len(s.units) == 12
    assert [u.index for u in s.units] == list(range(12))
    assert s.units[0].name == "conv1" and s.units[0].coupled > 10  # the residual stage-1 group
    assert s.units[1].name == "layers.0.conv1"
    assert all("fc" not in u.members for u in s.units)
    assert s.total_macs == 40_813_184
    fmap = [u.fmap for u in s.units]
    assert fmap == sorted(fmap, reverse=True)


def test_depthwise_units() -> None:
    s = analyze(_model("mobilenetv2"), X)
    kinds = {u.kind for u in s.units}
    assert kinds == {"conv", "depthwise"}
    # an expansion group owns the 1x1 expansion and the 3x3 depthwise conv after it: it is seen as depthwise, with
    # the depthwise conv's kernel and stride (the three stride-2 downsamplings stay visible to the policy)
    dw = [u for u in s.units if u.kind == "depthwise"]
    assert all(u.kernel == 3 for u in dw)
    assert sum(u.stride == 2 for u in dw) == 3
    assert any(u.kind == "conv" and u.kernel == 1 for u in s.units)  # residual-coupled 1x1 projections
    # MobileNet v1: every pointwise conv owns the depthwise conv after it; only the last one (into the classifier)
    # is a plain conv
    v1 = analyze(_model("mobilenetv1"), X).units
    assert [u.kind for u in v1] == ["depthwise"] * 13 + ["conv"]
    assert sum(u.stride == 2 for u in v1) == 4
    # residual groups of ResNet see the strided 1x1 shortcut they own
    r = analyze(_model("resnet20"), X)
    assert [u.stride for u in r.units].count(2) == 4


def _zero_removed(model: nn.Module, kept: dict[str, list[int]]) -> nn.Module:
    """Zero every parameter that pruning will remove, so the dense model computes what the pruned one does."""
    graph = build_graph(model, X)
    for name, idxs in kept.items():
        root = model.get_submodule(name)
        total = graph.get_out_channels(root)
        remove = sorted(set(range(total)) - set(idxs))
        if not remove:
            continue
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, remove)
        for dep, rm in group:
            m = dep.target.module
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
                with torch.no_grad():
                    m.weight[rm] = 0
                    if m.bias is not None:
                        m.bias[rm] = 0
    return model


@pytest.mark.parametrize("name", sorted(SMALL))
def test_pruned_outputs_equal_dense_when_pruned_channels_are_zero(name: str) -> None:
    model = _model(name)
    s = analyze(model, X)
    ratios = [0.25 + 0.5 * (i % 2) for i in range(len(s.units))]
    plan = Plan.from_ratios(s, ratios)
    _, recorded = prune(model, plan, X)
    zeroed = _zero_removed(model, recorded.kept)
    pruned, _ = prune(zeroed, recorded, X)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(zeroed(x), pruned.eval()(x), atol=1e-5)
    assert count_params(pruned) < count_params(model)
    # Physically smaller tensors, and exactly the predicted costs.
    assert (count_macs(pruned, (3, 32, 32)), count_params(pruned)) == predict_costs(s, plan.channels)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_criteria_prune_to_the_planned_channels(criterion: str) -> None:
    model = _model("resnet20")
    s = analyze(model, X)
    plan = Plan.from_ratios(s, [0.5] * len(s.units), importance=criterion)
    calibration = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    pruned, rec = prune(model, plan, X, calibration=calibration)
    assert {k: len(v) for k, v in rec.kept.items()} == plan.channels
    assert pruned.conv1.out_channels == 8 and pruned.layers[0].conv1.out_channels == 8


def test_criteria_pick_the_largest_channels() -> None:
    model = _model("vgg16_bn")
    s = analyze(model, X)
    with torch.no_grad():
        model.features[0].weight.mul_(0.01)
        model.features[0].weight[[5, 9]] *= 1000
    plan = Plan.from_ratios(s, {"features.0": 63 / 64})
    _, rec = prune(model, plan, X, importance="l1")
    assert len(rec.kept["features.0"]) == 1 and rec.kept["features.0"][0] in (5, 9)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_round_to_and_min_channels() -> None:
    s = analyze(_model("resnet20"), X)
    plan = Plan.from_ratios(s, [0.4] * 12, round_to=8)
    assert all(c % 8 == 0 for c in plan.channels.values())
    # the same rounding applied at prune time to an unrounded plan
    pruned, done = prune(_model("resnet20"), Plan.from_ratios(s, [0.4] * 12), X, round_to=8)
    assert done.channels == plan.channels and done.round_to == 8
    assert pruned.layers[0].conv1.out_channels == plan.channels["layers.0.conv1"]
    collect = _Collect()
    logger = logging.getLogger("rlprune.pruning")
    logger.addHandler(collect)
    try:
        tiny = Plan.from_ratios(s, {"layers.0.conv1": 0.99}, min_channels=2)
    finally:
        logger.removeHandler(collect)
    assert tiny.channels["layers.0.conv1"] == 2
    assert any("layers.0.conv1" in m for m in collect.messages)


def test_bad_plans() -> None:
    model = _model("resnet20")
    s = analyze(model, X)
    with pytest.raises(RLPruneError, match=r"unit 'conv1': ratio 1.0 outside \[0, 1\)"):
        Plan.from_ratios(s, {"conv1": 1.0})
    with pytest.raises(RLPruneError, match="ratio -0.1 outside"):
        Plan.from_ratios(s, {"conv1": -0.1})
    with pytest.raises(RLPruneError, match="unit 'fc' is not a prunable unit"):
        Plan.from_ratios(s, {"fc": 0.5})
    with pytest.raises(RLPruneError, match="3 ratios given for 12"):
        Plan.from_ratios(s, [0.1, 0.2, 0.3])
    other = analyze(_model("vgg16_bn"), X)
    plan = Plan.from_ratios(other, [0.5] * len(other.units))
    with pytest.raises(RLPruneError, match="made for another model"):
        prune(model, plan, X)
    with pytest.raises(RLPruneError, match="made for another model"):
        plan.check(s)


class _LayerScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.conv(x) * self.scale).mean((2, 3)))


class _HandMadeLinear(nn.Module):
    """A leaf layer doing its own matrix product: torch-pruning cannot know which dimension is which."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


def test_unsupported_operation_is_named() -> None:
    # a parameter outside any layer (layer scale) is pruned with the channels it multiplies
    model = _LayerScaled()
    s = analyze(model, X)
    pruned, _ = prune(model, Plan.from_ratios(s, [0.5]), X)
    assert pruned.scale.shape == (1, 4, 1, 1)
    bad = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), _HandMadeLinear())
    with pytest.raises(RLPruneError, match="layer '3' \\(_HandMadeLinear\\): torch-pruning has no pruner"):
        analyze(bad, X)
    with pytest.raises(RLPruneError, match="no prunable units"):
        analyze(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), X)


def test_plan_json_round_trip_and_rebuild(tmp_path: Path) -> None:
    model = _model("resnet20")
    s = analyze(model, X)
    plan = Plan.from_ratios(s, [0.3] * 12, round_to=4, model="resnet20")
    pruned, recorded = prune(model, plan, X)
    path = recorded.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again == recorded and again.key() == recorded.key()
    # Dense architecture + plan + safetensors weights rebuild the pruned model exactly.
    save_checkpoint(
        tmp_path / "pruned",
        pruned,
        {"model": "resnet20", "model_kwargs": {}, "plan": recorded.to_dict(), "input_size": 32, "in_channels": 3},
    )
    rebuilt, _ = load_checkpoint(tmp_path / "pruned.json")
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(pruned.eval()(x), rebuilt.eval()(x))
    bad = json.loads(path.read_text())
    bad["format"] = "something-else"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RLPruneError, match="not an rlprune plan"):
        Plan.load(tmp_path / "bad.json")


def test_pruning_is_deterministic() -> None:
    model = _model("mobilenetv2")
    s = analyze(model, X)
    plan = Plan.from_ratios(s, [0.4] * len(s.units))
    a, pa = prune(model, plan, X)
    b, pb = prune(model, plan, X)
    assert pa.kept == pb.kept
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_analysis_and_peers_leave_a_train_mode_model_as_it_was() -> None:
    """Analysis, pruning and a peer allocation trace with forward passes: a model handed over in train mode must keep
    its batch-norm running statistics (one train-mode forward would move them) and its mode."""
    from rlprune.pruning.peers import PeerAllocation

    model = _model("resnet20").train()
    x = torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = analyze(model, x)
    PeerAllocation(model, x, structure, "tp-global", max_ratio=0.8).ratios(0.3)
    prune(model, uniform_plan(structure, 0.5), x)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
