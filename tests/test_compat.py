"""Compatibility suite: the building blocks of users' networks, analyzed, pruned at several budgets and checked on
the physically pruned model (shape, predicted == measured MACs and parameters, a training step, ONNX).

The models (tests/compat_models.py) are small on purpose; each pattern is one that broke rlprune before: concat of
branches pruned by different ratios, grouped convs with squeeze-excitation gating, hidden Linear + dropout after
adaptive pooling to a non-divisor size, grayscale input, nn.MultiheadAttention, a ViT (class token, position
embedding, q/k/v heads) and a BERT-style encoder on token ids (heads reshaped by an attribute).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rlprune.cost.budget import Budget, macs_ratio, scale_to_budget, uniform_plan
from rlprune.cost.macs import count_macs, count_params, predict_costs
from rlprune.deploy.onnx import export_onnx
from rlprune.envs import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import Score
from rlprune.models.compat import check_model_io, fill_kwargs
from rlprune.pruning import Plan, Structure, analyze, prune
from tests import compat_models as cm


@dataclass(frozen=True)
class Case:
    factory: Callable[[], nn.Module]
    shape: tuple[int, ...]
    classes: int
    tokens: bool = False  # integer token ids instead of images

    def input(self, batch: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if self.tokens:
            return torch.randint(0, 100, (batch, *self.shape), generator=g)
        return torch.randn(batch, *self.shape, generator=g)

    def example(self) -> torch.Tensor:
        dtype = torch.long if self.tokens else torch.float32
        return torch.zeros(1, *self.shape, dtype=dtype)


CASES = {
    "inception": Case(cm.inception, (3, 32, 32), 10),
    "grouped_se": Case(cm.grouped_se, (3, 32, 32), 10),
    "mlp_head": Case(cm.mlp_head, (3, 28, 28), 10),
    "grayscale": Case(cm.grayscale, (1, 28, 28), 5),
    "mha": Case(cm.mha, (3, 32, 32), 10),
    "mini_vit": Case(cm.mini_vit, (3, 32, 32), 10),
    "mini_bert": Case(cm.mini_bert, (16,), 4, tokens=True),
}
_BUILT: dict[str, tuple[nn.Module, Structure]] = {}


def built(name: str) -> tuple[nn.Module, Structure]:
    """The case's model (seeded, eval mode) and its structure, built once per test session."""
    if name not in _BUILT:
        torch.manual_seed(0)
        model = CASES[name].factory().eval()
        for m in model.modules():  # non-trivial BN statistics: a wrong channel mapping changes outputs
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
        _BUILT[name] = (model, analyze(model, CASES[name].example()))
    return _BUILT[name]


def measured(model: nn.Module, case: Case) -> int:
    dtype = torch.long if case.tokens else torch.float32
    return count_macs(model, case.shape, dtype=dtype)


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Plain FlopCounterMode (no extra formulas): a second opinion where it knows every op."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def assert_exact(pred: int, meas: int, what: str) -> None:
    """Predicted within 1% of measured (the project's tolerance); a miss fails, never passes silently."""
    assert meas > 0 and abs(pred - meas) <= 0.01 * meas, f"{what}: predicted {pred}, measured {meas}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_plans_at_several_budgets_are_exact_on_the_pruned_model(name: str) -> None:
    case = CASES[name]
    model, s = built(name)
    dense_macs = measured(model, case)
    assert predict_costs(s, {}) == (s.total_macs, s.total_params)
    assert_exact(s.total_macs, dense_macs, f"{name} dense MACs")
    assert s.total_params == count_params(model)
    rng = random.Random(0)
    for target in (0.3, 0.5, 0.7):
        for plan in (
            uniform_plan(s, target),
            scale_to_budget(s, [rng.uniform(0.2, 1.0) for _ in s.units], target),  # uneven ratios
        ):
            pruned, done = prune(model, plan, case.example())
            out = pruned(case.input(3))
            assert out.shape == (3, case.classes)
            pred_macs, pred_params = predict_costs(s, done.channels)
            meas = measured(pruned, case)
            assert_exact(pred_macs, meas, f"{name} at {target}")
            assert pred_params == count_params(pruned)
            assert meas / dense_macs <= target + 0.01


@pytest.mark.parametrize("name", sorted(CASES))
def test_pruned_model_trains_a_step(name: str) -> None:
    case = CASES[name]
    model, s = built(name)
    pruned, _ = prune(model, Plan.from_ratios(s, [0.5] * len(s.units)), case.example())
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    before = [p.detach().clone() for p in pruned.parameters()]
    loss = nn.functional.cross_entropy(pruned(case.input(4, 1)), torch.arange(4) % case.classes)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, pruned.parameters(), strict=True))


@pytest.mark.parametrize("name", ["mini_vit", "mini_bert", "mha"])
def test_clamped_plans_land_in_the_tolerance_despite_coarse_units(name: str) -> None:
    """Whole heads (and MHA head dimensions) move the cost in big steps; the finer units before the last coarse one
    make up for its rounding, so every clamped plan lands in [target - tolerance, target], not below it."""
    _, s = built(name)
    rng = random.Random(0)
    for target in (0.3, 0.4, 0.5, 0.6, 0.7):
        budget = Budget(s, target, max_ratio=0.9, tolerance=0.01)
        plans = [budget.uniform_plan()] + [budget.plan([rng.uniform(0, 0.95) for _ in s.units]) for _ in range(12)]
        for plan in plans:
            assert target - 0.01 - 1e-9 <= macs_ratio(s, plan) <= target + 1e-9, (target, plan.channels)


def test_grouped_units_keep_multiples_of_groups_and_se_gates_follow() -> None:
    model, s = built("grouped_se")
    grouped = [u for u in s.units if u.groups > 1]
    assert grouped and all(u.groups == 4 and u.kind == "conv" for u in grouped)
    plan = Plan.from_ratios(s, [0.37] * len(s.units))
    assert all(plan.channels[u.name] % u.groups == 0 for u in grouped)
    pruned, _ = prune(model, plan, CASES["grouped_se"].example())
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
    assert pruned.block1.se.fc2.out_channels == pruned.block1.grouped[0].out_channels


def test_ratio_zero_keeps_the_function_and_concat_inputs_are_per_branch() -> None:
    model, s = built("inception")
    x = CASES["inception"].input(2)
    pruned, _ = prune(model, Plan.from_ratios(s, {}), CASES["inception"].example())
    torch.testing.assert_close(pruned(x), model(x))
    # block2's first conv reads the concat of three branches: three input segments, one per unit
    layer = next(la for la in s.layers if la.name == "block2.b1.0")
    assert len(layer.in_units) == 3 and sum(n for _, n in layer.in_units) == layer.in_channels == 24


def test_attention_heads_are_whole_and_counted() -> None:
    model, s = built("mini_vit")
    heads = [u for u in s.units if u.kind == "heads"]
    mlp = [u for u in s.units if u.kind == "mlp"]
    assert len(heads) == 2 and len(mlp) == 2
    assert all(u.channels == 4 and u.head_dim == 8 for u in heads)
    plan = Plan.from_ratios(s, {u.name: 0.5 for u in heads})
    pruned, done = prune(model, plan, CASES["mini_vit"].example())
    for block in pruned.blocks:
        assert block.attn.q.out_features == block.attn.k.out_features == block.attn.v.out_features == 16
        assert block.attn.proj.in_features == 16
    assert all(done.channels[u.name] == 2 for u in heads)
    # q·kᵀ and attn·v are in the count and shrink with the heads kept (FlopCounterMode agrees where it can see)
    x = CASES["mini_vit"].example()
    assert predict_costs(s, done.channels)[0] == measured(pruned, CASES["mini_vit"])
    assert flop_counter_macs(pruned, x) <= measured(pruned, CASES["mini_vit"])
    # an attribute-reshaped attention (BERT style) gets its head count updated
    bert, sb = built("mini_bert")
    pb, _ = prune(
        bert, Plan.from_ratios(sb, {u.name: 0.5 for u in sb.units if u.kind == "heads"}), torch.zeros(1, 16).long()
    )
    assert all(layer.attention.num_attention_heads == 2 for layer in pb.layers)
    assert all(layer.attention.all_head_size == 16 for layer in pb.layers)


def test_class_token_position_embedding_and_mha_follow_the_embedding() -> None:
    model, s = built("mini_vit")
    stream = s.units[0]
    plan = Plan.from_ratios(s, {stream.name: 0.5})
    pruned, done = prune(model, plan, CASES["mini_vit"].example())
    kept = done.channels[stream.name]
    assert pruned.cls_token.shape == (1, 1, kept) and pruned.pos_embed.shape[-1] == kept
    mha, sm = built("mha")
    pm, done = prune(mha, Plan.from_ratios(sm, [0.4] * len(sm.units)), CASES["mha"].example())
    assert pm.attn.embed_dim % pm.attn.num_heads == 0 and pm.attn.num_heads == 4


def test_unprunable_parts_are_refused_before_work_in_one_line() -> None:
    class NoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 16, 4, 4)
            self.query, self.key, self.value = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x).flatten(2).transpose(1, 2)
            q, k, v = (f(t).view(1, -1, 2, 8).transpose(1, 2) for f in (self.query, self.key, self.value))
            return self.head((torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2).flatten(2).mean(1))

    with pytest.raises(RLPruneError, match="projection '(query|key|value)' has no head count") as info:
        analyze(NoHeads(), torch.zeros(1, 3, 32, 32))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["mlp_head", "grouped_se", "mini_vit"])
def test_onnx_round_trip(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    model, s = built(name)
    pruned, _ = prune(model, uniform_plan(s, 0.5), case.example())
    result = export_onnx(pruned, case.shape, tmp_path / "m.onnx")
    assert result["exporter"] == "dynamo" and result["max_abs_diff"] < 1e-4


def test_legacy_exporter_failure_is_one_explained_line(tmp_path: Path) -> None:
    model, _ = built("mlp_head")  # AdaptiveAvgPool2d(3) on a 7x7 map: the legacy exporter refuses it
    with pytest.raises(RLPruneError, match="legacy exporter") as info:
        export_onnx(model, CASES["mlp_head"].shape, tmp_path / "m.onnx", exporter="legacy")
    assert "\n" not in str(info.value) and not (tmp_path / "m.onnx").exists()


def test_user_factory_gets_dataset_sizes_or_a_one_line_error() -> None:
    assert fill_kwargs(cm.grayscale, {}, num_classes=3, in_channels=1) == {"num_classes": 3, "in_channels": 1}
    assert fill_kwargs(cm.grayscale, {"num_classes": 5}, 3, 1)["num_classes"] == 5  # the config wins
    assert fill_kwargs(cm.mini_bert, {}, 3, 1) == {"num_classes": 3}  # takes no channel count
    with pytest.raises(RLPruneError, match="set model.kwargs .*in_channels: 1"):
        check_model_io(cm.inception(), "pkg:inception", in_channels=1, input_size=28, num_classes=10)
    with pytest.raises(RLPruneError, match=r"outputs \(2, 7\).*expected \(2, 10\).*num_classes: 10"):
        check_model_io(cm.inception(num_classes=7), "pkg:inception", in_channels=3, input_size=32, num_classes=10)
    check_model_io(cm.grayscale(1, 5), "pkg:grayscale", in_channels=1, input_size=28, num_classes=5)


@dataclass(kw_only=True)
class _Measured(Score):
    macs_measured: int


class _PhysicalScorer:
    """Scores a plan by pruning the real model and counting its MACs (what the proxy evaluator records)."""

    importance = "l1"

    def __init__(self, name: str) -> None:
        self.case = CASES[name]
        self.model, self.structure = built(name)

    def __call__(self, plan: Plan) -> _Measured:
        pruned, _ = prune(self.model, plan, self.case.example())
        return _Measured(accuracy=50.0, macs_measured=measured(pruned, self.case))


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(CASES)),
    target=st.floats(0.35, 0.9),
    actions=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=40),
)
def test_any_env_plan_meets_the_budget_on_the_real_model(name: str, target: float, actions: list[float]) -> None:
    env = LayerPruningEnv(_PhysicalScorer(name), target=target, max_ratio=0.9, tolerance=0.02)
    env.reset(seed=0)
    info: dict = {}
    for t in range(len(env.units)):
        _, _, done, _, info = env.step([actions[t % len(actions)]])
        assert done == (t == len(env.units) - 1)
    assert abs(info["macs_ratio_measured"] - info["macs_ratio"]) <= 0.01 * info["macs_ratio"]
    assert info["macs_ratio_measured"] <= target + 0.01 * target
    assert macs_ratio(env.structure, Plan.from_dict(info["plan"])) == pytest.approx(info["macs_ratio"])


def test_plans_of_units_that_feed_grouped_convs_pass_their_own_check() -> None:
    """A unit feeding grouped convolutions keeps a multiple of its groups, which may lie more than one channel from
    (1 - ratio) * channels: every plan the project makes for it still passes the plan check (a policy's rollout on a
    ResNeXt-style net used to be refused by it)."""
    from compat_models import grouped_se

    from rlprune.pruning import Plan

    model = grouped_se().eval()
    structure = analyze(model, torch.zeros(1, 3, 32, 32))
    assert any(u.groups > 1 for u in structure.units)
    for ratio in [i / 64 for i in range(52)]:
        Plan.from_ratios(structure, [ratio] * len(structure.units)).check(structure)
