"""What the user tells rlprune that it cannot find by itself: parts to leave unpruned (``prune.ignore``) and attention
head counts (``prune.heads``). Each is refused in one line naming the key first, then works when given, through
analysis, pruning, saved plans, the pruned checkpoint's rebuild, the config and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from rlprune.cli.commands import prune_options
from rlprune.cli.parser import build_parser
from rlprune.config import SearchConfig, load_config
from rlprune.cost.budget import uniform_plan
from rlprune.cost.macs import count_macs, predict_costs
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import MetricScorer
from rlprune.pruning import Plan, analyze, prune, rebuild_pruned
from rlprune.pruning.options import PruneOptions
from tests import compat_models as cm

IMAGE = (3, 32, 32)
EXAMPLE = torch.zeros(1, *IMAGE)


def _model(factory: object, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return factory(**kw).eval()  # type: ignore[operator]


def _one_line_refusal(match: str, model: nn.Module, **kw: object) -> str:
    with pytest.raises(RLPruneError, match=match) as info:
        analyze(model, EXAMPLE, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    return str(info.value)


def _rebuilt(dense: nn.Module, pruned: nn.Module, done: Plan) -> nn.Module:
    """The pruned model rebuilt as a checkpoint is: dense architecture + saved plan (JSON) + weights."""
    meta = {"plan": Plan.from_dict(done.to_dict()).to_dict(), "in_channels": 3, "input_size": 32}
    rebuilt = rebuild_pruned(dense, meta)
    rebuilt.load_state_dict(pruned.state_dict())
    return rebuilt.eval()


def test_unsupported_layer_is_refused_then_left_unpruned_when_ignored() -> None:
    model = _model(cm.hand_made_mix)
    message = _one_line_refusal("layer 'mix' \\(HandMadeMix\\): torch-pruning has no pruner", model)
    assert "prune.ignore: ['mix']" in message and "ignore=['mix']" in message and "--ignore mix" in message
    _one_line_refusal("prune.ignore: 'mixx' names no module or parameter", model, ignore=["mixx"])

    s = analyze(model, EXAMPLE, ignore=["mix"])
    assert s.options == PruneOptions(("mix",))
    assert [u.name for u in s.units] == ["stem.0"]  # body feeds the hand-made mix: coupled to it, left whole
    assert s.total_macs == count_macs(model, IMAGE)  # the mix's own matrix product is a fixed cost in the model
    x = torch.randn(2, *IMAGE)
    for target in (0.6, 0.8):
        pruned, done = prune(model, uniform_plan(s, target, max_ratio=0.9), EXAMPLE)
        assert pruned.stem[0].out_channels < 16 and pruned.body[0].out_channels == 24
        assert torch.equal(pruned.mix.weight, model.mix.weight)
        assert predict_costs(s, done.channels)[0] == count_macs(pruned, IMAGE)
        assert done.options == s.options and done.to_dict()["ignore"] == ["mix"]
        torch.testing.assert_close(_rebuilt(cm.hand_made_mix().eval(), pruned, done)(x), pruned(x))


def _zero_heads(model: nn.Module, removed: list[int], head_dim: int) -> nn.Module:
    """The dense model with the removed heads' values zeroed: what whole-head pruning must compute."""
    ref = cm.head_dim_transformer().eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for h in removed:
            ref.attn.v.weight[h * head_dim : (h + 1) * head_dim] = 0
            ref.attn.v.bias[h * head_dim : (h + 1) * head_dim] = 0
    return ref


def test_attention_without_head_count_is_refused_then_pruned_by_whole_heads_when_given() -> None:
    model = _model(cm.head_dim_transformer)
    message = _one_line_refusal("attention 'attn': projection 'attn.q' has no head count", model)
    assert "prune.heads: {'attn': <heads>}" in message and "--heads attn=<heads>" in message
    _one_line_refusal("prune.heads: 'atn' names no module", model, heads={"atn": 4})

    s = analyze(model, EXAMPLE, heads={"attn": 4})
    (unit,) = [u for u in s.units if u.kind == "heads"]
    assert unit.name.startswith("attn.") and (unit.channels, unit.head_dim) == (4, 8)
    pruned, done = prune(model, Plan.from_ratios(s, {unit.name: 0.5}), EXAMPLE)
    assert pruned.attn.q.out_features == pruned.attn.v.out_features == pruned.attn.proj.in_features == 16
    assert done.channels[unit.name] == 2 and len(done.kept[unit.name]) == 2  # heads kept, by head index
    x = torch.randn(3, *IMAGE)
    removed = sorted(set(range(4)) - set(done.kept[unit.name]))
    torch.testing.assert_close(pruned(x), _zero_heads(model, removed, 8)(x), rtol=1e-5, atol=1e-5)
    assert predict_costs(s, done.channels)[0] == count_macs(pruned, IMAGE)
    torch.testing.assert_close(_rebuilt(cm.head_dim_transformer().eval(), pruned, done)(x), pruned(x))


def test_head_count_attribute_and_projection_names_rlprune_does_not_know() -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return cm.HeadDimTransformer(names=("a", "b", "c"), count_attr="nh").eval()

    model = build()
    message = _one_line_refusal("pruned by half, it fails", model)  # a/b/c pruned channel by channel break the view
    assert "prune.heads" in message and "prune.ignore" in message
    s = analyze(model, EXAMPLE, heads={"att*": "nh"})
    (unit,) = [u for u in s.units if u.kind == "heads"]
    assert (unit.channels, unit.head_dim) == (4, 8)
    for target in (0.5, 0.7):
        pruned, done = prune(model, uniform_plan(s, target), EXAMPLE)
        assert pruned.attn.nh == done.channels[unit.name] == pruned.attn.a.out_features // 8  # the attribute follows
        assert pruned(torch.randn(2, *IMAGE)).shape == (2, 10)
        assert predict_costs(s, done.channels)[0] == count_macs(pruned, IMAGE)
    _one_line_refusal("attribute 'heads' is NoneType, not a head count", model, heads={"attn": "heads"})


def test_scorer_and_hand_written_plans_carry_the_options(tmp_path: Path) -> None:
    model = _model(cm.hand_made_mix)
    scorer = MetricScorer(model, EXAMPLE, lambda m: 1.0, recal_batches=0, ignore=["mix"])
    assert scorer.structure.options.ignore == ("mix",)
    hand = tmp_path / "plan.json"
    hand.write_text('{"ratios": {"stem.0": 0.5}}')
    plan = Plan.load(hand, scorer.structure)
    assert plan.options == scorer.structure.options and scorer(plan).accuracy == 1.0
    other = analyze(_model(cm.head_dim_transformer), EXAMPLE, heads={"attn": 4})
    with pytest.raises(RLPruneError, match="made for another model"):
        plan.check(other)
    plan.options = PruneOptions(("mix", "head"))
    with pytest.raises(RLPruneError, match="made with prune options .*'head'.*analyzed with"):
        plan.check(scorer.structure)


def test_config_and_cli_name_the_same_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "prune": {"ignore": ["mix"]}}))
    cfg = load_config(path, SearchConfig, ["prune.heads={blocks.*.attn: 4, head: nh}"])
    assert cfg.prune.ignore == ["mix"] and cfg.prune.heads == {"blocks.*.attn": 4, "head": "nh"}
    assert SearchConfig(name="x").prune.model_dump() == {"ignore": [], "heads": {}}
    for override, match in (
        ("prune.ignor=[mix]", "unknown key 'prune.ignor' \\(did you mean 'ignore'\\?\\)"),
        ("prune.heads={attn: 0}", "prune: .*'attn': expected a head count > 0"),
        ("prune.ignore=['']", "prune: .*expected module or parameter names"),
    ):
        with pytest.raises(RLPruneError, match=match) as info:
            load_config(path, SearchConfig, [override])
        assert "\n" not in str(info.value)
    args = build_parser().parse_args(
        ["finetune", "--plan", "p", "--checkpoint", "c", "--out", "o", "--ignore", "mix", "--heads", "attn=4"]
    )
    assert prune_options(args) == PruneOptions(("mix",), {"attn": 4})
    args.heads = ["attn"]
    with pytest.raises(RLPruneError, match="--heads 'attn': expected MODULE=COUNT"):
        prune_options(args)
