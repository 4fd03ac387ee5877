"""Every importance criterion keeps the channels it should: weights are planted so that each criterion's best
channels are known (and differ between criteria), then a plan keeps as many channels as were planted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning import Plan, analyze, prune
from rlprune.pruning.importance import CRITERIA, L1, get_criterion

X = torch.zeros(1, 3, 16, 16)
CHANNELS = 8


def _net() -> nn.Sequential:
    """A small user-style CNN: the first conv's 8 channels form one unit (conv, its BN, the next conv's inputs)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3, padding=1, bias=False),
        nn.BatchNorm2d(CHANNELS),
        nn.ReLU(),
        nn.Conv2d(CHANNELS, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


def _planted(criterion: str) -> tuple[nn.Sequential, set[int]]:
    """The net with weights planted so that ``criterion`` must keep exactly the returned channels of the first conv.

    - l1: channels 2 and 6 spread weight over all 27 taps (L1 5.4, L2 1.04); channels 1 and 4 put it in one tap
      (L1 3, L2 3); the rest are small. L1 keeps {2, 6}, L2 keeps {1, 4}.
    - bn_scale: the BN scale is large on channels 3 and 7 although their conv weights are the smallest.
    - taylor: only channels 0 and 5 reach the output (the next conv reads no other); every other channel's
      |w · dL/dw| is exactly 0 over the whole group.
    The layers coupled to the unit (BN, the next conv's inputs) are equal across channels unless said otherwise, so
    only the planted layer decides.
    """
    net = _net()
    conv, bn, nxt = net[0], net[1], net[3]
    with torch.no_grad():
        conv.weight.fill_(0.05)
        bn.weight.fill_(1.0)
        bn.bias.fill_(0.1)
        nxt.weight.fill_(0.1)
        if criterion in ("l1", "l2"):
            conv.weight[[2, 6]] = 0.2
            conv.weight[[1, 4]] = 0.0
            conv.weight[[1, 4], 0, 1, 1] = 3.0
            return net, ({2, 6} if criterion == "l1" else {1, 4})
        if criterion == "bn_scale":
            conv.weight.copy_(torch.rand_like(conv.weight) + 1.0)
            conv.weight[[3, 7]] = 0.01
            bn.weight.fill_(0.1)
            bn.weight[[3, 7]] = 2.0
            return net, {3, 7}
        if criterion == "taylor":
            conv.weight.copy_(torch.randn_like(conv.weight))
            nxt.weight.zero_()
            nxt.weight[:, [0, 5]] = torch.randn(6, 2, 3, 3)
            return net, {0, 5}
    raise AssertionError(f"no planted weights for criterion '{criterion}': add them")


def test_every_criterion_has_a_planted_test() -> None:
    for name in CRITERIA:
        _planted(name)  # a new criterion must come with its planted weights


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_criterion_keeps_the_planted_channels(criterion: str) -> None:
    net, planted = _planted(criterion)
    s = analyze(net, X)
    unit = s.units[0]
    assert unit.channels == CHANNELS
    plan = Plan.from_ratios(s, {unit.name: 1 - len(planted) / CHANNELS}, importance=criterion)
    assert plan.channels[unit.name] == len(planted)
    torch.manual_seed(1)
    calibration = [(torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))) for _ in range(2)]
    pruned, rec = prune(net, plan, X, calibration=calibration if get_criterion(criterion).needs_gradients else None)
    assert set(rec.kept[unit.name]) == planted
    assert pruned[0].out_channels == len(planted) and pruned[3].in_channels == len(planted)
    # the pruned net computes what the dense one computes on the kept channels
    with torch.no_grad():
        for k, c in enumerate(sorted(planted)):
            assert torch.equal(pruned[0].weight[k], net[0].weight[c])


def test_criteria_rank_differently_on_the_same_weights() -> None:
    # the same planted net, ranked by l1 and l2: different channels, so neither test passes by a shared default
    net, _ = _planted("l1")
    s = analyze(net, X)
    unit = s.units[0]
    kept = {}
    for criterion in ("l1", "l2"):
        plan = Plan.from_ratios(s, {unit.name: 0.75}, importance=criterion)
        kept[criterion] = set(prune(net, plan, X)[1].kept[unit.name])
    assert kept == {"l1": {2, 6}, "l2": {1, 4}}


def test_no_scores_from_torch_pruning_is_an_error() -> None:
    group = [SimpleNamespace(idxs=list(range(5)))]
    criterion = L1()
    criterion.impl = lambda g: None  # type: ignore[assignment]
    with pytest.raises(RLPruneError, match=r"importance 'l1': torch-pruning gave no scores for a group of 5 channels"):
        criterion(group)
    criterion.impl = lambda g: torch.tensor([1.0, float("nan"), 2.0, 3.0, 4.0])  # type: ignore[assignment]
    with pytest.raises(RLPruneError, match=r"expected 5 finite channel scores .*got 5 \(1 not finite\)"):
        criterion(group)
    criterion.impl = lambda g: torch.ones(4)  # type: ignore[assignment]
    with pytest.raises(RLPruneError, match=r"expected 5 finite channel scores"):
        criterion(group)


def test_bn_scale_on_a_net_without_batch_norm_is_an_error() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(X)  # materialise the lazy layer
    s = analyze(net.eval(), X)
    plan = Plan.from_ratios(s, {s.units[0].name: 0.5}, importance="bn_scale")
    with pytest.raises(RLPruneError, match="importance 'bn_scale': torch-pruning gave no scores"):
        prune(net, plan, X)
