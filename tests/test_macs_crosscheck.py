"""The MACs rlprune reports (conv + linear, bias excluded) are exactly those of PyTorch's FlopCounterMode, on every
architecture of the suite, dense and pruned, and on small user-style nets (tests/helpers_macs.py)."""

from __future__ import annotations

import pytest
import torch
from helpers_macs import assert_macs_match_flop_counter
from netlib import flat_linear
from test_importance import _net as small_cnn
from torch import nn

from rlprune.cost.macs import count_macs, predict_costs
from rlprune.models import build_model
from rlprune.pruning import Plan, analyze, prune

X = torch.zeros(1, 3, 32, 32)


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet56", "vgg16_bn", "mobilenetv2"])
def test_zoo_architectures_dense_and_pruned(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    dense = assert_macs_match_flop_counter(model, (3, 32, 32))
    s = analyze(model, X)
    assert dense == s.total_macs
    plan = Plan.from_ratios(s, [0.5] * len(s.units))
    pruned, plan = prune(model, plan, X)
    # the real pruned model: counted by both counters, and exactly as the plan predicted
    assert assert_macs_match_flop_counter(pruned, (3, 32, 32)) == predict_costs(s, plan.channels)[0] < dense


class _Tokens(nn.Module):
    """A user-style hybrid: a strided conv stem on a non-square image, then linear layers over a token sequence
    (a linear applied to a 3-D tensor, the shape attention blocks' projections have), a 1-D conv, a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.mix = nn.Linear(16, 24)
        self.conv1d = nn.Conv1d(24, 8, 5, padding=2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.stem(x))
        tokens = self.mix(x.flatten(2).transpose(1, 2))  # (batch, H*W, 24)
        seq = self.conv1d(tokens.transpose(1, 2)).relu()  # (batch, 8, H*W)
        return self.head(seq.mean(-1))


@pytest.mark.parametrize(
    ("make", "shape"),
    [(flat_linear, (3, 32, 32)), (small_cnn, (3, 16, 16)), (_Tokens, (3, 24, 40))],
    ids=["flat_linear", "small_cnn", "tokens"],
)
def test_user_style_nets(make: object, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    assert_macs_match_flop_counter(make(), shape)  # type: ignore[operator]


class _Reused(nn.Module):
    """One conv applied twice: forward hooks that record a module's first call see half its compute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.stem = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(self.stem(x)))


def test_a_shared_layer_is_counted_at_every_call() -> None:
    # a per-module hook counter would count the shared layer once (39,936 MACs); every call is 76,800
    assert count_macs(_Reused(), (3, 16, 16)) == 76_800
    assert_macs_match_flop_counter(_Reused(), (3, 16, 16))
