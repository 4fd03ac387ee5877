"""Few-shot adaptation: a learned policy's training continued on the target model for a few episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic import PreferenceScorer

import rlprune as rp
from rlprune.agents.policy_io import load_policy
from rlprune.errors import RLPruneError
from rlprune.models import build_model
from rlprune.pruning import analyze

X = torch.zeros(1, 3, 32, 32)
PPO_SMALL = {"n_steps": 24, "batch_size": 12}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A PPO policy from a short search on a ResNet-20 (a synthetic scorer: instant, deterministic)."""
    tmp = tmp_path_factory.mktemp("adapt")
    torch.manual_seed(0)
    source = build_model("resnet20").eval()
    scorer = PreferenceScorer(analyze(source, X), {0, 4})
    result = rp.search(scorer, target=0.5, episodes=8, out_dir=tmp / "source", hyperparams=PPO_SMALL, max_ratio=0.7)
    assert result.policy is not None
    return {"tmp": tmp, "policy": result.policy, "dir": tmp / "source"}


def _target() -> tuple[torch.nn.Module, PreferenceScorer]:
    torch.manual_seed(1)
    model = build_model("resnet32").eval()  # deeper than the model the policy learned on
    return model, PreferenceScorer(analyze(model, X), {1, 7})


def test_adapt_continues_the_policy_and_never_returns_worse_than_its_rollout(trained: dict) -> None:
    model, scorer = _target()
    out = trained["tmp"] / "adapted"
    rollout, _ = rp.apply_policy(trained["policy"], model, X, target=0.5)
    plan, record = rp.apply_policy(
        trained["policy"], model, X, target=0.5, scorer=scorer, adapt=6, adapt_dir=out, seed=0
    )
    adapt = record["adapt"]
    assert adapt["episodes"] == 6 and adapt["run_dir"] == str(out) and adapt["seconds"] > 0
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 6
    # the candidates: the deterministic rollout and the adaptation's best, chosen by the scorer
    assert scorer(plan).accuracy >= max(scorer(rollout).accuracy, max(r["accuracy"] for r in records)) - 1e-9
    assert record["chosen"] in ("deterministic", "adapted")
    assert 0.49 <= rp.Budget(scorer.structure, 0.5).macs_ratio(plan.channels) <= 0.5 + 1e-9
    # the agent started from the policy's weights: the run records where it started, and its first update moved it
    config = (out / "config.yaml").read_text()
    assert "init_policy" in config and "the agent starts from the policy" in (out / "search.log").read_text()
    start = load_policy(out / "init_policy")
    assert all(
        torch.equal(a, b)
        for a, b in zip(start.policy.state_dict().values(), trained["policy"].policy.state_dict().values(), strict=True)
    )
    adapted = load_policy(out)
    assert adapted.info.feature_version == trained["policy"].info.feature_version


def test_adapt_is_reproducible_and_checks_its_inputs(trained: dict, tmp_path: Path) -> None:
    model, scorer = _target()
    runs = [
        rp.apply_policy(trained["dir"], model, X, target=0.5, scorer=scorer, adapt=4, adapt_dir=tmp_path / n)[1]
        for n in ("a", "b")
    ]
    lines = [(tmp_path / n / "episodes.jsonl").read_text().splitlines() for n in ("a", "b")]
    assert [json.loads(x)["ratios"] for x in lines[0]] == [json.loads(x)["ratios"] for x in lines[1]]
    assert runs[0]["candidates"] == runs[1]["candidates"]
    with pytest.raises(RLPruneError, match="adapt: .*needs a scorer"):
        rp.apply_policy(trained["policy"], model, X, target=0.5, adapt=3)
    with pytest.raises(RLPruneError, match="adapt: expected >= 0"):
        rp.apply_policy(trained["policy"], model, X, target=0.5, scorer=scorer, adapt=-1)
    # without a folder: a temporary one, gone afterwards
    _, record = rp.apply_policy(trained["policy"], model, X, target=0.5, scorer=scorer, adapt=2)
    assert record["adapt"]["run_dir"] is None and record["adapt"]["episodes"] == 2


def test_a_search_started_from_a_policy_must_match_its_action_scaling(trained: dict, tmp_path: Path) -> None:
    from rlprune.config import SearchConfig
    from rlprune.searching.api import run_search

    _, scorer = _target()
    base = {"name": "warm", "checkpoint": "unused", "output_dir": str(tmp_path)}
    policy_dir = str(trained["dir"])
    wrong = SearchConfig(**base, env={"max_ratio": 0.8}, agent={"episodes": 2, "init_policy": policy_dir})
    with pytest.raises(RLPruneError, match=r"agent.init_policy: .*max_ratio 0.7.*env.max_ratio is 0.8"):
        run_search(wrong, scorer=scorer, progress=False)
    assert not (tmp_path / "warm").exists()  # refused before the run directory exists
    with pytest.raises(RLPruneError, match="init_policy: .*RL agent"):
        run_search(
            SearchConfig(**base, env={"max_ratio": 0.7}, agent={"episodes": 2, "init_policy": policy_dir}),
            searcher="random",
            scorer=scorer,
            progress=False,
        )
    with pytest.raises(RLPruneError, match="init_policy: .*sac"):
        run_search(
            SearchConfig(
                **base, env={"max_ratio": 0.7}, agent={"episodes": 2, "algorithm": "sac", "init_policy": policy_dir}
            ),
            scorer=scorer,
            progress=False,
        )


def test_an_adaptation_resumes_only_on_its_own_model_and_leaves_the_callers_log(trained: dict, tmp_path: Path) -> None:
    import logging

    model, like = _target()
    scorer = _Weighted(model, like)
    logger = logging.getLogger("rlprune")
    before = (list(logger.handlers), logger.propagate)
    out = tmp_path / "a"
    rp.apply_policy(trained["policy"], model, X, target=0.5, scorer=scorer, adapt=2, adapt_dir=out)
    assert (list(logger.handlers), logger.propagate) == before  # its search logged to its own folder only
    _, again = rp.apply_policy(trained["policy"], model, X, target=0.5, scorer=scorer, adapt=2, adapt_dir=out)
    assert again["adapt"]["episodes"] == 2  # the same call: the finished adaptation, resumed
    torch.manual_seed(5)
    other = build_model("resnet32").eval()  # same architecture, other weights
    with pytest.raises(RLPruneError, match=r"another model \(weights_sha256"):
        rp.apply_policy(trained["policy"], other, X, target=0.5, scorer=_Weighted(other, like), adapt=2, adapt_dir=out)


class _Weighted(PreferenceScorer):
    """The same synthetic score for another model (its weights are what the adaptation records)."""

    def __init__(self, model: torch.nn.Module, like: PreferenceScorer) -> None:
        super().__init__(like.structure, like.protect)
        self.model = model


def test_an_older_policy_resumes_an_interrupted_adaptation_with_its_own_features(tmp_path: Path) -> None:
    """A policy of an earlier feature set, its adaptation killed before it saved anything: resumed, the agent is
    built for the policy's features again (not the current set)."""
    from rlprune.envs.features import FEATURE_VERSION

    older = load_policy("benchmarks/results/policies/resnet20_macs50_ppo_s1")
    assert older.info.feature_version != FEATURE_VERSION
    model = build_model("resnet20").eval()
    scorer = PreferenceScorer(analyze(model, X), {0, 3})
    out = tmp_path / "old"
    rp.apply_policy(older, model, X, target=0.5, scorer=scorer, adapt=2, adapt_dir=out)
    for name in ("policy.json", "policy.safetensors", "agent_state.pt", "summary.json"):
        (out / name).unlink()  # as if killed after its episodes, before any save
    _, record = rp.apply_policy(older, model, X, target=0.5, scorer=scorer, adapt=3, adapt_dir=out)
    assert record["adapt"]["episodes"] == 3 and load_policy(out).info.feature_version == older.info.feature_version
