from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import pretrain_tiny
from synthetic import PreferenceScorer

from rlprune.agents.policy_io import load_policy
from rlprune.cli import main
from rlprune.config import SearchConfig
from rlprune.envs import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.models import build_model
from rlprune.pruning import analyze
from rlprune.searching.api import run_search

STRUCTURE = analyze(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32))
PROTECT = {0, 5, 9}


def _cfg(tmp_path: Path, name: str, episodes: int, **agent: object) -> SearchConfig:
    return SearchConfig(
        name=name,
        checkpoint="unused",
        output_dir=str(tmp_path),
        agent={"episodes": episodes, "checkpoint_every": 4, **agent},
    )


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]


def test_train_writes_the_run_directory(tmp_path: Path) -> None:
    summary = run_search(
        _cfg(tmp_path, "ppo", 8, hyperparams={"n_steps": 24, "batch_size": 12}),
        scorer=PreferenceScorer(STRUCTURE, PROTECT),
        progress=False,
    )
    run = tmp_path / "ppo"
    for name in (
        "config.yaml",
        "episodes.jsonl",
        "best_plan.json",
        "policy.safetensors",
        "policy.json",
        "agent_state.pt",
        "summary.json",
        "search.log",
    ):
        assert (run / name).is_file(), name
    assert summary.episodes == 8 and len(_records(run)) == 8
    assert list((run / "tb").rglob("events.out.tfevents*"))
    best = json.loads((run / "best_plan.json").read_text())
    assert best["metrics"]["accuracy"] == max(r["accuracy"] for r in _records(run))
    policy = load_policy(run / "policy.json")
    env = LayerPruningEnv(PreferenceScorer(STRUCTURE, PROTECT), target=0.5)
    obs, _ = env.reset(seed=0)
    assert policy.act(obs).shape == (1,) and -1 <= float(policy.act(obs)[0]) <= 1


class _Crash(Exception):
    pass


class _CrashingScorer(PreferenceScorer):
    def __init__(self, after: int) -> None:
        super().__init__(STRUCTURE, PROTECT)
        self.after = after

    def __call__(self, plan):
        if self.calls >= self.after:
            raise _Crash
        return super().__call__(plan)


@pytest.mark.parametrize("searcher", [None, "random", "evolution"])
def test_resume_loses_no_episode(tmp_path: Path, searcher: str | None) -> None:
    cfg = _cfg(tmp_path, "run", 14, hyperparams={"n_steps": 24, "batch_size": 12})
    with pytest.raises(_Crash):
        run_search(cfg, searcher=searcher, scorer=_CrashingScorer(after=9), progress=False)
    before = _records(tmp_path / "run")
    assert len(before) == 9
    with pytest.raises(RLPruneError, match="a search already ran here") as refused:
        run_search(cfg, searcher=searcher, scorer=PreferenceScorer(STRUCTURE, PROTECT), progress=False)
    assert refused.value.fix == "resume_or_rename"  # the CLI turns it into "pass --resume ..."
    summary = run_search(
        cfg, searcher=searcher, scorer=PreferenceScorer(STRUCTURE, PROTECT), resume=True, progress=False
    )
    after = _records(tmp_path / "run")
    assert after[:9] == before and len(after) == 14 and summary.episodes == 14
    assert [r["episode"] for r in after] == list(range(1, 15))
    if searcher is not None:  # deterministic searchers continue exactly as an uninterrupted run
        straight = run_search(
            _cfg(tmp_path, "straight", 14),
            searcher=searcher,
            scorer=PreferenceScorer(STRUCTURE, PROTECT),
            progress=False,
        )
        assert [r["ratios"] for r in _records(tmp_path / "straight")] == [r["ratios"] for r in after]
        assert straight.best == summary.best


@pytest.mark.parametrize("searcher", [None, "random", "evolution", "uniform"])
def test_same_seed_same_plans(tmp_path: Path, searcher: str | None) -> None:
    runs = []
    for name in ("a", "b"):
        run_search(
            _cfg(tmp_path, name, 6, hyperparams={"n_steps": 24, "batch_size": 12}),
            searcher=searcher,
            scorer=PreferenceScorer(STRUCTURE, PROTECT),
            progress=False,
        )
        runs.append([r["ratios"] for r in _records(tmp_path / name)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("algorithm", "hyperparams"), [("ppo", {"learning_rate": 1e-3}), ("ddpg", {"learning_starts": 120})]
)
def test_agent_finds_the_known_best_plan(tmp_path: Path, algorithm: str, hyperparams: dict) -> None:
    """On the synthetic task the best plan spares units 0, 5 and 9; the agent's best plan must spare them too."""
    run_search(
        _cfg(tmp_path, algorithm, 160, algorithm=algorithm, hyperparams=hyperparams),
        scorer=PreferenceScorer(STRUCTURE, PROTECT),
        progress=False,
    )
    best = json.loads((tmp_path / algorithm / "best_plan.json").read_text())
    ratios = list(best["ratios"].values())
    protected = np.mean([ratios[i] for i in PROTECT])
    others = np.mean([r for i, r in enumerate(ratios) if i not in PROTECT])
    assert protected < others
    assert best["metrics"]["macs_ratio"] <= 0.5 + 1e-9


def _write(tmp_path: Path, **env: object) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(
        yaml.safe_dump({"name": "x", "checkpoint": "c.json", "output_dir": str(tmp_path / "runs"), "env": env})
    )
    return p


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"reward": "bogus"}, "unknown reward 'bogus'"),
        ({"target": 1.5}, "target must be a ratio in (0, 1]"),
        ({"target": 0}, "target must be a ratio in (0, 1]"),
        ({"min_ratio": 0.7, "max_ratio": 0.5}, "min_ratio (0.7) > max_ratio (0.5)"),
    ],
)
def test_bad_search_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict, match: str) -> None:
    assert main(["train", str(_write(tmp_path, **env))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err, err
    assert not (tmp_path / "runs").exists()


def test_train_and_search_cli_on_a_real_checkpoint(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = pretrain_tiny(image_folder, tmp_path, width=8, val_size=12, name="tiny")
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "checkpoint": str(checkpoint),
                "output_dir": str(tmp_path / "runs"),
                "proxy": {"recal_batches": 2, "recal_batch_size": 8},
                "agent": {"episodes": 4, "hyperparams": {"n_steps": 24, "batch_size": 12}},
            }
        )
    )
    capsys.readouterr()
    assert main(["train", str(search), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 4 and 0.49 <= summary["best"]["macs_ratio"] <= 0.5
    assert main(["search", str(search), "--searcher", "random", "--quiet", "--set", "agent.episodes=3"]) == 0
    assert len(_records(tmp_path / "runs" / "s-random")) == 3
    assert main(["search", str(search), "--searcher", "nope"]) == 2


def test_off_policy_transitions_carry_the_final_reward() -> None:
    from gymnasium import spaces

    from rlprune.agents.replay import EpisodeRewardReplayBuffer

    buf = EpisodeRewardReplayBuffer(16, spaces.Box(0, 1, (2,)), spaces.Box(-1, 1, (1,)), device="cpu")
    for step, (reward, done) in enumerate([(0.0, False), (0.0, False), (0.7, True)]):
        obs = np.full((1, 2), step / 3, dtype=np.float32)
        buf.add(obs, obs + 0.1, np.zeros((1, 1), np.float32), np.array([reward]), np.array([done]), [{}])
        assert buf.size() == (0 if not done else 3)  # nothing is replayable before the episode's reward is known
    assert np.allclose(buf.rewards[:3, 0], 0.7) and np.all(buf.dones[:3, 0] == 1)
    assert np.allclose(buf.observations[:3, 0, 0], [0, 1 / 3, 2 / 3])
