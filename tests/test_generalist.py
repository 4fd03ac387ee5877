"""One policy over several models and budgets: depth-invariant features, relative rewards, the multi-model env, the
several-checkpoint search, and zero-shot apply with its trained-range check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rlprune.config import SearchConfig, load_config
from rlprune.cost.budget import Budget, macs_ratio
from rlprune.data import default_data_dirs
from rlprune.envs.features import FEATURE_GROUPS, SPECS, feature_spec, static_features
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.envs.multi import MultiModelEnv
from rlprune.envs.references import References
from rlprune.envs.rewards import Outcome, get_reward
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import Score
from rlprune.io.schemas import PolicyMeta
from rlprune.jobs.apply import check_policy_target, outside_training, policy_plans
from rlprune.models import build_model
from rlprune.pruning import analyze
from rlprune.pruning.analysis import norm_spread

X = torch.zeros(1, 3, 32, 32)
ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "zoo"
HAVE_DATA = (
    any((d / "cifar10-jpeg.tar.gz").is_file() for d in default_data_dirs())
    and (ZOO / "resnet32_cifar10.json").is_file()
)


def _structure(name: str, **kwargs: object):
    torch.manual_seed(0)
    return analyze(build_model(name, **kwargs).eval(), X)


class ChannelScorer:
    """A deterministic stand-in scorer: the score is the share of kept channels (in percent), so references and
    rewards can be checked by hand."""

    importance = "l1"

    def __init__(self, structure) -> None:
        self.structure = structure
        self.calls = 0

    def __call__(self, plan) -> Score:
        self.calls += 1
        kept = sum(plan.channels[u.name] for u in self.structure.units)
        total = sum(u.channels for u in self.structure.units)
        return Score(accuracy=100.0 * kept / total, metrics={}, seconds=0.0, cached=False)


def test_norm_spread_matches_hand_computation():
    layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0]]))  # row norms 5, 1, 2
    norms = np.array([5.0, 1.0, 2.0])
    assert norm_spread([layer], 3) == pytest.approx(norms.std() / norms.mean())
    # heads: rows read as sections x heads x head_dim (fused q|k|v): 2 heads of dim 1 in 2 sections
    fused = nn.Linear(1, 4, bias=False)
    with torch.no_grad():
        fused.weight.copy_(torch.tensor([[1.0], [2.0], [1.0], [2.0]]))  # head 0: rows 0, 2; head 1: rows 1, 3
    head_norms = np.sqrt([2.0, 8.0])
    assert norm_spread([fused], 2, 1) == pytest.approx(head_norms.std() / head_norms.mean())
    assert norm_spread([nn.Linear(2, 5)], 3) == 0.0  # outputs that do not split into the slots are skipped


def test_v3_features_do_not_shrink_with_depth_where_v2_shares_do():
    shallow, deep = _structure("resnet20"), _structure("resnet56")
    v2 = {n: SPECS[2].static_names.index(n) for n in ("macs_share",)}
    share20 = static_features(shallow, 2)[:, v2["macs_share"]].mean()
    share56 = static_features(deep, 2)[:, v2["macs_share"]].mean()
    assert share20 / share56 > 2  # v2: a 3x deeper network looks like "all small layers"
    names = SPECS[3].static_names
    f20, f56 = static_features(shallow, 3), static_features(deep, 3)
    for name in ("macs_rel", "width_rel", "stage_position", "position_in_stage", "macs_before"):
        i = names.index(name)
        assert abs(f20[:, i].mean() - f56[:, i].mean()) < 0.06, name
    assert np.all((f56 >= 0) & (f56 <= 1)) and np.isfinite(f56).all()


def test_feature_groups_and_versions_are_consistent():
    spec = feature_spec(3)
    grouped = [n for names in FEATURE_GROUPS.values() for n in names]
    assert sorted(grouped) == sorted(spec.names)  # every v3 feature in exactly one ablation group
    assert feature_spec(2).size == 18 and spec.size == len(spec.names)
    with pytest.raises(RLPruneError, match="v9: unknown"):
        feature_spec(9)


def test_feature_envelope_bounds_what_the_policy_observed():
    from rlprune.envs.features import (
        ENVELOPE_MARGIN,
        check_envelope,
        feature_envelope,
        feature_spec,
        outside_envelope,
    )

    n = len(feature_spec(3).static_names)
    a, b = np.full((2, n), 0.5), np.full((3, n), 0.5)
    a[0, 0], b[1, 0], b[2, 1] = 0.2, 0.6, 1.7  # feature 1 is observed clipped to 1
    envelope = feature_envelope([a, b], 3)
    assert envelope["low"][:2] == [0.2, 0.5] and envelope["high"][:2] == [0.6, 1.0]
    probe = np.full((4, n), 0.5)
    probe[0, 0] = 0.2 - ENVELOPE_MARGIN + 1e-9  # inside by the margin
    probe[1, 0] = 0.2 - 2 * ENVELOPE_MARGIN  # below the range
    probe[2, 0], probe[2, 2] = 0.6 + 2 * ENVELOPE_MARGIN, 0.0  # above on one feature, below on another
    probe[3, 1] = 5.0  # observed as 1: inside
    found = outside_envelope(probe, envelope)
    name0, name2 = envelope["names"][0], envelope["names"][2]
    assert found == {"units": 2, "of": 4, "indices": [1, 2], "features": {name0: 2, name2: 1}}
    with pytest.raises(RLPruneError, match="feature envelope"):
        outside_envelope(probe[:, :-1], envelope)  # another feature set
    with pytest.raises(RLPruneError, match="feature envelope"):
        feature_envelope([], 3)
    # one check for a policy read from a file and one built in memory: the envelope must name this feature set
    check_envelope(envelope, 3)
    for broken in ({**envelope, "names": envelope["names"][::-1]}, [envelope["low"], envelope["high"]], "v3"):
        with pytest.raises(RLPruneError, match="feature_envelope does not list the v3 static features"):
            check_envelope(broken, 3)
    reversed_names = {**envelope, "names": envelope["names"][::-1]}  # well-formed, but another feature order
    with pytest.raises(RLPruneError, match="^policy: feature_envelope does not list"):
        outside_training(_meta(feature_version=3, feature_envelope=reversed_names), structure=None)
    with pytest.raises(RLPruneError, match="v2 static features"):
        check_envelope(envelope, 2)  # a v3 envelope on a v2 policy


def test_relative_rewards_by_hand():
    o = Outcome(
        accuracy=72.0, macs_ratio=0.5, latency_ratio=math.nan, macs=1, dense_accuracy=90.0, uniform_accuracy=70.0
    )
    assert get_reward("retention")(o) == pytest.approx(0.8)
    assert get_reward("gain_over_uniform")(o) == pytest.approx(0.02)
    with pytest.raises(RLPruneError, match="uniform model's score"):
        get_reward("gain_over_uniform")(Outcome(accuracy=1.0, macs_ratio=0.5, latency_ratio=0.0, macs=1))


def test_references_interpolate_uniform_scores_on_a_grid():
    structure = _structure("resnet20")
    scorer = ChannelScorer(structure)
    budget = Budget(structure, (0.3, 0.8))
    refs = References(scorer, budget, grid=0.1)
    assert refs.dense() == pytest.approx(100.0)
    at = {t: scorer(budget.uniform_plan(t)).accuracy for t in (0.4, 0.5)}
    scorer.calls = 0
    value = refs.uniform(0.43)
    assert value == pytest.approx(at[0.4] + (at[0.5] - at[0.4]) * 0.3)
    assert scorer.calls == 2
    refs.uniform(0.47)  # same grid points: answered from the cache
    assert scorer.calls == 2
    assert set(refs.measured()["uniform"]) == {"0.400", "0.500"}


def _env(name: str, structure, target=(0.3, 0.8)) -> LayerPruningEnv:
    return LayerPruningEnv(ChannelScorer(structure), target=target, reward="gain_over_uniform", name=name)


def test_multi_model_env_draws_models_and_targets_reproducibly():
    envs = [_env("r20", _structure("resnet20")), _env("mb", _structure("mobilenetv2", width_mult=0.25))]
    multi = MultiModelEnv(envs)
    check_env(multi, skip_render_check=True)

    def draws(seed: int) -> list[tuple[str, float]]:
        out = []
        multi.reset(seed=seed)
        for _ in range(12):
            _, info = multi.reset()
            out.append((info["model"], round(info["target"], 6)))
        return out

    first = draws(3)
    assert first == draws(3)
    assert {m for m, _ in first} == {"r20", "mb"} and all(0.3 <= t <= 0.8 for _, t in first)
    multi.reset(options={"model": "mb", "target": 0.5})
    done, reward = False, 0.0
    while not done:
        _, reward, done, _, step_info = multi.step(np.zeros(1, dtype=np.float32))
    assert step_info["model"] == "mb" and "uniform_accuracy" in step_info
    assert reward == pytest.approx((step_info["accuracy"] - step_info["uniform_accuracy"]) / 100)
    with pytest.raises(RLPruneError, match="distinct name"):
        MultiModelEnv([_env("a", envs[0].structure), _env("a", envs[0].structure)])


def test_several_checkpoints_config():
    cfg = SearchConfig(name="g", checkpoints=["zoo/a.json", "other/b.json"], env={"target": [0.3, 0.8]})
    assert cfg.env.reward == "gain_over_uniform"  # relative by default across models
    assert SearchConfig(name="g", checkpoints=["a.json"], env={"reward": "accuracy"}).env.reward == "accuracy"
    for bad, match in (
        ({"checkpoint": "x.json", "checkpoints": ["a.json"]}, "not both"),
        ({"checkpoints": ["zoo/a.json", "other/a.json"]}, "share a file name"),
        ({"checkpoints": ["a.json"], "env": {"budget": "latency"}}, "not latency"),
        ({"checkpoint": "x.json", "pre_pruned": {"copies": 2}}, "give 'checkpoints'"),
        (
            {"checkpoints": ["a.json"], "pre_pruned": {}, "env": {"granularity": "unstructured", "budget": "params"}},
            "must be channel",
        ),
        ({"checkpoints": ["a.json"], "pre_pruned": {"max_ratio": 1.0}}, "max_ratio"),
        ({"checkpoints": ["a.json"], "pre_pruned": {"copies": 1, "heal": 3}}, "heal"),
        ({"checkpoints": ["a.json", "b/a-pruned2.json"], "pre_pruned": {"copies": 2}}, "a-pruned2 is also the name"),
        ({"checkpoints": ["a.json"], "pre_pruned": {}, "prune": {"heads": {"blocks.*.attn": 4}}}, "name the attribute"),
    ):
        with pytest.raises(ValueError, match=match):
            SearchConfig(name="g", **bad)


def _meta(**fields: object) -> PolicyMeta:
    """A policy's validated metadata with these fields (the rest as a PPO policy of feature set 3 would have)."""
    return PolicyMeta.model_validate({"format": "rlprune-policy/1", "algorithm": "ppo", "feature_version": 3, **fields})


def test_policy_target_range_is_enforced_unless_forced():
    meta = _meta(target=[0.3, 0.8], budget="macs")
    check_policy_target(meta, 0.5, "macs")
    check_policy_target(meta, 0.81, "macs")  # within the slack
    with pytest.raises(RLPruneError, match=r"outside what the policy was trained for \(\[0.3, 0.8\]\)") as info:
        check_policy_target(meta, 0.9, "macs")
    assert info.value.fix == "force"
    check_policy_target(meta, 0.9, "macs", force=True)
    with pytest.raises(RLPruneError, match="latency budget"):
        check_policy_target(_meta(target=0.5, budget="latency"), 0.5, "macs")


def test_older_policy_is_rolled_out_with_its_own_features():
    from rlprune.agents.policy_io import load_policy

    policy = load_policy(ROOT / "benchmarks/results/policies/resnet20_macs50_ppo_s1")
    assert policy.meta["feature_version"] == 2
    model = build_model("resnet56").eval()
    structure = analyze(model, X)
    plan = policy_plans(policy, model, structure, target=0.5)[0]
    assert abs(macs_ratio(structure, plan) - 0.5) <= 0.011


@pytest.mark.skipif(not HAVE_DATA, reason="needs the CIFAR-10 copy ($RLPRUNE_DATA) and zoo/")
def test_generalist_search_applies_zero_shot(tmp_path):
    """Two zoo models, 16 episodes with a tiny proxy: the run records models, the policy records what it was
    trained on, resumes to more episodes without re-scoring, and rolls out on a third model within budget."""
    config = tmp_path / "g.yaml"
    config.write_text(
        "name: g\n"
        f"output_dir: {tmp_path}\n"
        f"checkpoints: [{ZOO / 'resnet20_cifar10.json'}, {ZOO / 'resnet32_cifar10.json'}]\n"
        "env: {target: [0.4, 0.7]}\n"
        "proxy: {val_images: 100, finetune_steps: 0, recal_batches: 1, recal_batch_size: 16}\n"
        "agent: {episodes: 10}\n"
    )
    from rlprune.searching.api import run_search

    cfg = load_config(config, SearchConfig)
    summary = run_search(cfg, progress=False)
    assert summary.reward == "gain_over_uniform" and summary.episodes == 10
    assert sum(m.episodes for m in summary.models) == 10
    records = [json.loads(line) for line in (tmp_path / "g" / "episodes.jsonl").read_text().splitlines()]
    assert {r["model"] for r in records} <= {"resnet20_cifar10", "resnet32_cifar10"}
    assert all("uniform_accuracy" in r and 0.39 <= r["macs_ratio"] <= 0.7 + 1e-9 for r in records)
    meta = json.loads((tmp_path / "g" / "policy.json").read_text())
    assert meta["feature_version"] == 3 and meta["target"] == [0.4, 0.7]
    assert [m["name"] for m in meta["models"]] == ["resnet20_cifar10", "resnet32_cifar10"]
    from rlprune.envs.features import feature_envelope, feature_spec
    from rlprune.jobs.apply import load_dense

    trained_on = [feature_spec(3).static(load_dense(m["checkpoint"])[2]) for m in meta["models"]]
    assert meta["feature_envelope"] == feature_envelope(trained_on, 3)  # the range over both models' units

    more = load_config(config, SearchConfig, ["agent.episodes=12"])
    assert run_search(more, resume=True, progress=False).episodes == 12

    model = build_model("resnet56").eval()
    structure = analyze(model, X)
    plan = policy_plans(str(tmp_path / "g"), model, structure, target=0.55)[0]
    assert abs(macs_ratio(structure, plan) - 0.55) <= 0.011
    with pytest.raises(RLPruneError, match="outside what the policy was trained for"):
        policy_plans(str(tmp_path / "g"), model, structure, target=0.2)


@pytest.mark.skipif(not HAVE_DATA, reason="needs the CIFAR-10 copy ($RLPRUNE_DATA) and zoo/")
def test_pre_pruned_copies_widen_what_the_policy_sees(tmp_path):
    """``pre_pruned``: each checkpoint also enters as randomly cut, healed copies — real smaller models whose units
    are unevenly wide — drawn by their weight, recorded in the policy, rebuilt identically on resume."""
    from rlprune.envs.features import feature_spec
    from rlprune.jobs.apply import load_dense
    from rlprune.searching.api import run_search
    from rlprune.searching.multi import model_envs

    body = (
        "name: pp\n"
        f"output_dir: {tmp_path}\n"
        f"checkpoints: [{ZOO / 'resnet20_cifar10.json'}]\n"
        "pre_pruned: {copies: 2, max_ratio: 0.6, heal_steps: 4, heal_batch_size: 32, weight: 0.5}\n"
        "env: {target: [0.4, 0.7], min_channels: 2}\n"
        "proxy: {val_images: 100, finetune_steps: 0, recal_batches: 1, recal_batch_size: 16}\n"
        "agent: {episodes: 6}\n"
    )
    (tmp_path / "pp.yaml").write_text(body)
    cfg = load_config(tmp_path / "pp.yaml", SearchConfig)
    envs, sources = model_envs(cfg, trust_model_code=False)
    dense, *copies = envs
    assert [e.name for e in envs] == ["resnet20_cifar10", "resnet20_cifar10-pruned1", "resnet20_cifar10-pruned2"]
    for env, source in zip(copies, sources[1:], strict=True):
        widths = [u.channels for u in env.units]
        assert widths != [u.channels for u in dense.units] and min(widths) >= 2  # cut for real, floored by env
        assert source["pre_pruned"] in (1, 2) and 0.1 < source["macs_ratio"] < 0.95
        assert len(source["ratios"]) == len(dense.units) and max(source["ratios"]) <= 0.6
        assert env.structure.total_macs == pytest.approx(source["macs_ratio"] * dense.structure.total_macs, rel=1e-3)
        assert 10 < env.references.dense() < 100  # healed: a working network, scored by its own proxy
    assert copies[0].structure.fingerprint != copies[1].structure.fingerprint  # each copy its own draw
    width = list(feature_spec(3).static_names).index("width_rel")
    spread = [float(np.ptp(feature_spec(3).static(e.structure)[:, width])) for e in envs]
    assert max(spread[1:]) > spread[0]  # uneven widths: what a policy trained on even ResNets never sees

    summary = run_search(cfg, progress=False)
    meta = json.loads((tmp_path / "pp" / "policy.json").read_text())
    assert [m["name"] for m in meta["models"]] == [e.name for e in envs]
    assert meta["models"][1]["pre_pruned"] == 1 and meta["models"][1]["checkpoint"] == sources[0]["checkpoint"]
    assert meta["models"][1]["weight"] == 0.5 and "weight" not in meta["models"][0]
    assert meta["models"][1]["fingerprint"] == copies[0].structure.fingerprint
    low = meta["feature_envelope"]["low"][width]
    assert low < float(np.clip(feature_spec(3).static(load_dense(sources[0]["checkpoint"])[2])[:, width], 0, 1).min())
    assert sum(m.episodes for m in summary.models) == 6
    # a resume cannot change how the copies are made, nor use copies that came out different
    changed = load_config(tmp_path / "pp.yaml", SearchConfig, ["agent.episodes=7", "pre_pruned.heal_steps=5"])
    with pytest.raises(RLPruneError, match=r"another config \(pre_pruned.heal_steps: 4 -> 5\)"):
        run_search(changed, resume=True, progress=False)
    record = tmp_path / "pp" / "copies.json"
    copies_json = record.read_text()
    assert json.loads(copies_json)["resnet20_cifar10-pruned2"]["weights_sha256"] == sources[2]["weights_sha256"]
    record.write_text(copies_json.replace(sources[2]["weights_sha256"], "0" * 64))
    more = load_config(tmp_path / "pp.yaml", SearchConfig, ["agent.episodes=7", "pre_pruned.weight=1"])
    with pytest.raises(RLPruneError, match="copy resnet20_cifar10-pruned2 came out different"):
        run_search(more, resume=True, progress=False)
    record.write_text(copies_json)
    # resumed: the same copies are cut and healed again (same weights), so recorded scores are theirs
    resumed = run_search(more, resume=True, progress=False)
    assert resumed.episodes == 7
    assert [m.to_dict()["weights_sha256"] for m in resumed.models[1:]] == [s["weights_sha256"] for s in sources[1:]]


@pytest.mark.skipif(not HAVE_DATA, reason="needs the CIFAR-10 copy ($RLPRUNE_DATA) and zoo/")
def test_python_api_trains_one_policy_over_your_own_models(tmp_path):
    """``rp.search`` with a dict of named scorers — your models, your DataLoaders, your metric — trains one policy
    over all of them with the relative reward, and that policy prunes a third model it never saw within budget."""
    import rlprune as rp
    from rlprune.jobs.apply import load_dense

    splits = rp.load_splits("cifar10", limit_train=600)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (splits.mean, splits.std))

    def loader(ds, n: int, batch: int) -> DataLoader:
        return DataLoader(TensorDataset((ds.images[:n].float() / 255 - mean) / std, ds.labels[:n]), batch_size=batch)

    train, val = loader(splits.train, 256, 64), loader(splits.val, 200, 200)

    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        x, y = next(iter(val))
        return 100.0 * (model.eval()(x).argmax(1) == y).float().mean().item()

    models = {name: load_dense(str(ZOO / f"{name}_cifar10.json"))[0] for name in ("resnet20", "vgg11")}
    scorers = {name: rp.MetricScorer(m, X, accuracy, train_loader=train, recal_batches=2) for name, m in models.items()}
    result = rp.search(scorers, target=(0.4, 0.7), episodes=6, out_dir=tmp_path / "mine", seed=0)
    assert result.summary.reward == "gain_over_uniform"  # raw accuracies of two models are not one scale
    assert {r["model"] for r in result.records} <= {"resnet20", "vgg11"} and len(result.records) == 6
    assert [m["name"] for m in result.policy.meta["models"]] == ["resnet20", "vgg11"]
    assert result.policy.meta["target"] == [0.4, 0.7] and result.policy.meta["feature_envelope"]
    other = load_dense(str(ZOO / "resnet32_cifar10.json"))[0]
    plan, record = rp.apply_policy(result.policy, other, X, target=0.55)
    assert 0.539 <= macs_ratio(rp.analyze(other, X), plan) <= 0.55
    assert record["outside_training"]["of"] == len(rp.analyze(other, X).units)  # checked against what it saw
    with pytest.raises(RLPruneError, match="not latency"):
        rp.search(scorers, budget="latency", out_dir=tmp_path / "lat")
    with pytest.raises(RLPruneError, match="one RL policy"):
        rp.search(scorers, agent="random", out_dir=tmp_path / "rand")


@pytest.mark.skipif(not HAVE_DATA, reason="needs the CIFAR-10 copy ($RLPRUNE_DATA) and zoo/")
def test_healing_a_pre_pruned_copy_recovers_accuracy():
    """The same random cut, healed and not: healing (distillation steps) gives a better working network."""
    from rlprune.config import EnvConfig, PrePrunedConfig
    from rlprune.evaluation.proxy import proxy_from_checkpoint
    from rlprune.pruning import Plan as FullPlan
    from rlprune.searching.multi import pre_pruned_model

    scorer = proxy_from_checkpoint(str(ZOO / "resnet20_cifar10.json"), val_images=300, recal_batches=4)
    scores = {}
    for steps in (0, 25):
        pp = PrePrunedConfig(max_ratio=0.7, heal_steps=steps, heal_batch_size=64)
        model, plan = pre_pruned_model(scorer, pp, np.random.default_rng(3), EnvConfig(), seed=3)
        assert plan.kept and all(len(plan.kept[u]) == plan.channels[u] for u in plan.channels)  # cut for real
        scores[steps] = scorer.measure(model)[0]
    dense = scorer(FullPlan.from_ratios(scorer.structure, [0.0] * len(scorer.structure.units))).accuracy
    assert scores[0] + 5 < scores[25] < dense  # 64.0 -> 74.0 (dense 90)


@pytest.mark.skipif(not HAVE_DATA, reason="needs the CIFAR-10 copy ($RLPRUNE_DATA) and zoo/")
def test_main_job_applies_a_policy_zero_shot(tmp_path, capsys):
    """``rlprune run`` with ``policy:`` rolls the policy out instead of searching, then fine-tunes and reports;
    a target outside the policy's range is refused with the flag that forces it."""
    import yaml

    from rlprune.cli import main

    body = {
        "name": "zs",
        "checkpoint": str(ZOO / "resnet20_cifar10.json"),
        "output_dir": str(tmp_path),
        "policy": str(ROOT / "benchmarks/results/policies/resnet20_macs50_ppo_s1"),
        "env": {"target": 0.5},
        "finetune": {"epochs": 1, "batch_size": 64, "steps_per_epoch": 5},
    }
    (tmp_path / "zs.yaml").write_text(yaml.safe_dump(body))
    assert main(["run", str(tmp_path / "zs.yaml"), "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert not (tmp_path / "zs" / "episodes.jsonl").exists()  # no search ran
    report = json.loads((tmp_path / "zs" / "pruned" / "report.json").read_text())
    assert 0.49 <= report["pruned"]["macs"] / report["dense"]["macs"] <= 0.5 and first["macs_ratio"] <= 0.5
    assert report["source"]["policy"] == body["policy"]
    assert first["outside_training"] is None  # a policy saved before policies recorded their feature range
    body.update(name="zs2", env={"target": 0.3})
    (tmp_path / "zs2.yaml").write_text(yaml.safe_dump(body))
    assert main(["run", str(tmp_path / "zs2.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "outside what the policy was trained for" in err and "--force" in err
    # a run directory a search wrote into keeps its best plan: the rollout needs a run of its own
    body.update(name="searched", env={"target": 0.5})
    (tmp_path / "searched").mkdir()
    (tmp_path / "searched" / "episodes.jsonl").write_text("")
    (tmp_path / "searched.yaml").write_text(yaml.safe_dump(body))
    assert main(["run", str(tmp_path / "searched.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a search ran here" in err and "--set name=" in err
    assert not (tmp_path / "searched" / "best_plan.json").exists()


def test_resumed_search_keeps_the_feature_set_its_agent_was_built_for(tmp_path):
    from rlprune.envs.features import FEATURE_VERSION
    from rlprune.searching.api import run_search
    from rlprune.searching.identity import resumed_features

    assert resumed_features(tmp_path) == FEATURE_VERSION  # nothing saved yet
    (tmp_path / "policy.json").write_text(json.dumps({"feature_version": 2}))
    assert resumed_features(tmp_path) == 2  # an agent saved by an older rlprune keeps its 18 inputs
    with pytest.raises(RLPruneError, match="applying one is rlprune run"):
        run_search(SearchConfig(name="x", checkpoint="a.json", policy="p", output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="rounds.policy"):
        SearchConfig(name="x", checkpoint="a.json", policy="p", rounds=[0.8, 0.5])
