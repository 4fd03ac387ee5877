"""Weight-level granularity: unstructured and N:M sparsity as the agent's action, on a parameter budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune.config import EnvConfig, SearchConfig
from rlprune.cost.budget import Budget
from rlprune.cost.macs import count_nonzero, count_params
from rlprune.envs.episode import rollout
from rlprune.envs.priors import centered_action, centered_ratio, prior_ratios
from rlprune.errors import RLPruneError
from rlprune.models import build_model
from rlprune.pruning import Plan, analyze, prune
from rlprune.pruning.sparsity import budget_sparsity, load_sparse, save_sparse
from rlprune.pruning.weights import sparsify_plan, structure_for, weight_structure

X = torch.zeros(1, 3, 32, 32)


class Stem3(nn.Module):
    """A 3-channel stem (input size 27: no 2:4 pattern fits), a grouped conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.grouped(torch.relu(self.stem(x))).mean((2, 3)))


def test_weight_structure_lists_layers_in_forward_order_with_weight_counts() -> None:
    model = Stem3()
    s = weight_structure(model, X, granularity="unstructured")
    assert [u.name for u in s.units] == ["stem", "grouped", "head"]
    assert [u.channels for u in s.units] == [432, 16 * 4 * 9, 160]
    assert s.total_params == count_params(model)
    assert s.fingerprint.endswith(":unstructured")
    nm = weight_structure(model, X, granularity="nm", pattern="2:4")
    assert [u.name for u in nm.units] == ["grouped", "head"]  # 3x3x3 = 27 inputs: the stem stays dense
    assert weight_structure(model, X, granularity="unstructured", ignore=["head"]).units[-1].name == "grouped"
    with pytest.raises(RLPruneError, match="names no module"):
        weight_structure(model, X, ignore=["nope"])


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_unstructured_plans_meet_the_parameter_budget_and_zero_exactly_that(target: float) -> None:
    model = build_model("resnet20")
    s = weight_structure(model, X, granularity="unstructured")
    budget = Budget(s, target, kind="params", max_ratio=0.95)
    rng = np.random.default_rng(0)
    for ratios in ([budget.uniform_ratio()] * len(s.units), list(rng.uniform(0, 0.95, len(s.units)))):
        plan = budget.plan(ratios, importance="magnitude")
        assert target - budget.tolerance <= budget.cost(plan.channels) <= target + 1e-9
        copy = build_model("resnet20")
        copy.load_state_dict(model.state_dict())
        masks = sparsify_plan(copy, plan)
        removed = sum(u.channels - plan.channels[u.name] for u in s.units)
        assert count_nonzero(copy) == count_nonzero(model) - removed  # fresh weights: none was zero before
        assert set(masks.masks) == {u.name for u in s.units if plan.channels[u.name] < u.channels}


def test_nm_plans_choose_layers_and_land_inside_the_tolerance() -> None:
    """Every N:M layer is dense or 2:4; the budget's subset-sum clamp still lands in [target - tol, target] for any
    actions (a continuous clamp would not: the last layers move in steps larger than the window)."""
    model = build_model("resnet20")
    s = weight_structure(model, X, granularity="nm", pattern="2:4")
    budget = Budget(s, 0.7, kind="params")
    rng = np.random.default_rng(1)
    for _ in range(20):
        plan = budget.plan(list(rng.uniform(0, 0.8, len(s.units))))
        assert set(plan.ratios.values()) <= {0.0, 0.5}
        assert 0.69 <= budget.cost(plan.channels) <= 0.7 + 1e-9
    masks = sparsify_plan(model, plan)
    for name, mask in masks.masks.items():
        groups = mask.reshape(-1, 4).sum(1)
        assert plan.ratios[name] == 0.5 and bool((groups == 2).all())


def test_weight_level_plans_round_trip_and_are_refused_where_they_do_not_belong(tmp_path: Path) -> None:
    model = build_model("resnet20")
    s = structure_for(model, X, "unstructured")
    plan = Budget(s, 0.4, kind="params").uniform_plan(importance="magnitude")
    again = Plan.load(plan.save(tmp_path / "plan.json"))
    assert again.granularity == "unstructured" and again.key() == plan.key()
    with pytest.raises(RLPruneError, match="weight-level"):
        prune(model, plan, X)
    channel = structure_for(model, X, "channel")
    with pytest.raises(RLPruneError, match="another model"):
        plan.check(channel)
    data = json.loads((tmp_path / "plan.json").read_text())
    data["granularity"] = "3:2"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(RLPruneError, match="granularity"):
        Plan.load(tmp_path / "bad.json")


def test_a_prior_is_what_action_zero_gives() -> None:
    """``env.prior``: action 0 reproduces global magnitude sparsity (unstructured) or the uniform plan (channels),
    each for the episode's own target; actions and ratios map back and forth around it."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, width=8).eval()
    s = weight_structure(model, X, granularity="unstructured")
    budget = Budget(s, (0.2, 0.6), kind="params", max_ratio=0.95)
    for target in (0.25, 0.5):
        prior = prior_ratios("magnitude", budget, target, model)
        plan = rollout(budget, lambda obs: np.zeros(1), target, "magnitude", prior=prior)
        nonzero = round(target * s.total_params)
        global_ratios = budget_sparsity(model, nonzero, [u.name for u in s.units])
        assert max(abs(plan.ratios[n] - r) for n, r in global_ratios.items()) < 0.02
        assert target - budget.tolerance <= budget.cost(plan.channels) <= target + 1e-9
    channels = analyze(model, X)
    macs = Budget(channels, 0.5)
    uniform = rollout(macs, lambda obs: np.zeros(1), 0.5, prior=prior_ratios("uniform", macs, 0.5))
    assert uniform.channels == macs.uniform_plan().channels
    for a in (-1.0, -0.3, 0.0, 0.7, 1.0):
        assert centered_action(centered_ratio(a, 0.4, 0.0, 0.99), 0.4) == pytest.approx(a, abs=1e-6)
    with pytest.raises(RLPruneError, match="unstructured"):
        prior_ratios("magnitude", macs, 0.5, model)
    with pytest.raises(ValueError, match="prior magnitude"):
        EnvConfig(granularity="nm", budget="params", prior="magnitude")


def test_config_refuses_weight_level_granularity_on_a_channel_budget() -> None:
    with pytest.raises(ValueError, match="budget: params"):
        EnvConfig(granularity="unstructured", budget="macs")
    with pytest.raises(ValueError, match="pattern"):
        EnvConfig(granularity="nm", budget="params", pattern="4:2")
    assert EnvConfig(granularity="nm", budget="params", pattern="1:4").pattern == "1:4"


def test_sparse_run_searches_finetunes_keeps_zeros_and_saves_compactly(image_folder: Path, tmp_path: Path) -> None:
    """``rlprune run`` with ``env.granularity: unstructured``: the agent searches per-layer sparsity on real images,
    the best plan is fine-tuned (its zeros survive the SGD steps), saved in dense layout and as values + mask, and
    both files load back to the same model."""
    from conftest import pretrain_tiny

    from rlprune.io.checkpoint import load_checkpoint
    from rlprune.jobs.pipeline import run_job

    checkpoint = pretrain_tiny(image_folder, tmp_path, width=4, val_size=12, name="tiny")
    cfg = SearchConfig(
        name="sparse",
        checkpoint=str(checkpoint),
        output_dir=str(tmp_path / "runs"),
        env={"granularity": "unstructured", "budget": "params", "target": 0.4, "max_ratio": 0.95, "prior": "magnitude"},
        proxy={"recal_batches": 1, "recal_batch_size": 8, "finetune_steps": 2},
        agent={"episodes": 3, "hyperparams": {"n_steps": 22, "batch_size": 11}},
        finetune={"epochs": 1, "batch_size": 16},
    )
    run_job(cfg, progress=False)
    run = tmp_path / "runs" / "sparse"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget"] == "params" and 0.39 <= summary["best"]["budget_cost"] <= 0.4 + 1e-9
    policy = json.loads((run / "policy.json").read_text())
    assert policy["granularity"] == "unstructured" and policy["budget"] == "params"
    assert policy["prior"] == "magnitude"  # rolled out around global magnitude sparsity when applied, too
    from rlprune.jobs.apply import policy_plans

    dense, _ = load_checkpoint(checkpoint)
    applied = policy_plans(
        run / "policy.json", dense, structure_for(dense.eval(), X, "unstructured"), target=0.4, budget="params"
    )[0]
    assert applied.granularity == "unstructured"
    plan = Plan.load(run / "best_plan.json")
    report = json.loads((run / "pruned" / "report.json").read_text())
    sparse = report["sparse"]
    assert sparse["nonzero_ratio"] == pytest.approx(summary["best"]["budget_cost"], abs=1e-3)
    assert sparse["file_bytes_sparse"] < sparse["file_bytes_dense_layout"]
    assert report["pruned"]["params"] == report["dense"]["params"]  # same shapes
    model, saved = load_checkpoint(run / "pruned" / "model.json")
    assert "plan" not in saved and saved["sparse_plan"]["granularity"] == "unstructured"
    assert count_nonzero(model) == sparse["nonzero_params"]  # zeros kept through fine-tuning
    other, _ = load_checkpoint(checkpoint)
    masks = load_sparse(other, run / "pruned" / "model.sparse.safetensors")
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sum(int(m.sum()) for m in masks.masks.values()) == sum(plan.channels[n] for n in masks.masks)
    assert "## Sparsity (unstructured)" in (run / "pruned" / "report.md").read_text()


def test_apply_a_sparse_policy_from_the_cli(image_folder: Path, tmp_path: Path) -> None:
    """``rlprune apply --target-params`` rolls a weight-level policy out on the model, meets the budget, fine-tunes;
    a channel target for it is refused in one line."""
    from conftest import pretrain_tiny

    from rlprune.cli import main
    from rlprune.searching.api import run_search

    checkpoint = pretrain_tiny(image_folder, tmp_path, width=4, val_size=12, name="tiny")
    cfg = SearchConfig(
        name="nm",
        checkpoint=str(checkpoint),
        output_dir=str(tmp_path / "runs"),
        env={"granularity": "nm", "budget": "params", "target": [0.6, 0.9]},
        proxy={"recal_batches": 1, "recal_batch_size": 8},
        agent={"episodes": 2, "hyperparams": {"n_steps": 16, "batch_size": 8}},
    )
    run_search(cfg, progress=False)
    policy = str(tmp_path / "runs" / "nm")
    base = ["apply", "--policy", policy, "--checkpoint", str(checkpoint), "--finetune-epochs", "1", "--quiet"]
    base += ["--batch-size", "16"]
    assert main([*base, "--target-params", "0.8", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert 0.79 <= report["sparse"]["nonzero_ratio"] <= 0.8 + 1e-6 and report["sparse"]["granularity"] == "2:4"
    assert main([*base, "--target-macs", "0.8", "--out", str(tmp_path / "out2")]) != 0


def test_nm_ratios_snap_to_their_two_levels_and_a_file_cannot_say_otherwise(tmp_path: Path) -> None:
    model = build_model("resnet20")
    s = weight_structure(model, X, granularity="nm", pattern="2:4")
    names = [u.name for u in s.units]
    plan = Plan.from_ratios(s, {names[0]: 0.3, names[1]: 0.2}, importance="magnitude")
    assert plan.ratios[names[0]] == 0.5 and plan.ratios[names[1]] == 0.0
    data = plan.to_dict()
    data["ratios"][names[0]] = 0.3  # hand-edited: 2:4 keeps half, whatever the ratio says
    data["channels"][names[0]] = round(0.7 * s.units[0].channels)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(RLPruneError, match="dense"):
        Plan.load(tmp_path / "p.json").check(s)
    with pytest.raises(RLPruneError, match="not 2:4 or dense"):
        sparsify_plan(model, Plan.load(tmp_path / "p.json"))


def test_python_search_with_a_weight_level_scorer(image_folder: Path, tmp_path: Path) -> None:
    """``rp.search`` reads the granularity from the scorer: a parameter budget, a weight-level best plan."""
    from conftest import pretrain_tiny

    from rlprune.evaluation.proxy import proxy_from_checkpoint
    from rlprune.searching.api import search
    from rlprune.searching.identity import prepare_run

    checkpoint = pretrain_tiny(image_folder, tmp_path, width=4, val_size=12, name="tiny")
    scorer = proxy_from_checkpoint(str(checkpoint), recal_batches=1, recal_batch_size=8, granularity="unstructured")
    result = search(scorer, target=0.5, agent="random", episodes=2, out_dir=tmp_path / "runs" / "py")
    assert result.best_plan.granularity == "unstructured" and result.summary.budget == "params"
    assert 0.49 <= result.best["budget_cost"] <= 0.5 + 1e-9
    # a run directory written before env.granularity existed still resumes (the new keys take their defaults)
    saved = tmp_path / "runs" / "py" / "config.yaml"
    old = saved.read_text().replace("  granularity: unstructured\n", "").replace("  pattern: '2:4'\n", "")
    cfg = SearchConfig.model_validate(__import__("yaml").safe_load(old))
    saved.write_text(old)
    prepare_run(cfg, tmp_path / "runs" / "py", resume=True, searcher="random")


class FusedAttention(nn.Module):
    """Patch tokens through ``nn.MultiheadAttention``, whose q/k/v projection is a bare parameter (no Linear) and
    whose output projection's Linear is never called as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(t, t, t)[0].mean(1))


def test_attention_projections_are_sparsified_kept_zero_and_saved(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FusedAttention()
    s = weight_structure(model, X, granularity="unstructured")
    assert [u.name for u in s.units] == ["embed", "attn.in_proj", "attn.out_proj", "head"]
    in_proj = s.unit("attn.in_proj")
    assert (in_proj.channels, in_proj.macs) == (48 * 16, 16 * 48 * 16)  # 16 tokens x (3E x E)
    for name in ("attn.in_proj", "attn.in_proj_weight"):  # by the unit's name or by its parameter's
        kept = weight_structure(model, X, granularity="unstructured", ignore=[name])
        assert [u.name for u in kept.units] == ["embed", "attn.out_proj", "head"]
    plan = Budget(s, 0.4, kind="params").uniform_plan()
    masks = sparsify_plan(model, plan)
    assert int((model.attn.in_proj_weight != 0).sum()) == plan.channels["attn.in_proj"] < 48 * 16
    masks.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3, 32, 32)).square().mean().backward()
        opt.step()
    masks.detach()
    assert int((model.attn.in_proj_weight != 0).sum()) == plan.channels["attn.in_proj"]
    assert int((model.attn.out_proj.weight != 0).sum()) == plan.channels["attn.out_proj"]
    path = save_sparse(model, masks, tmp_path / "m.sparse.safetensors")
    fresh = FusedAttention()
    loaded = load_sparse(fresh, path)
    assert sorted(loaded.masks) == sorted(masks.masks)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
