from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from synthetic import PreferenceScorer

from rlprune.envs import ENV_ID, FEATURES, N_FEATURES, LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.models import build_model
from rlprune.pruning import analyze

STRUCTURE = analyze(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32))


def _env(**kw: object) -> LayerPruningEnv:
    return LayerPruningEnv(PreferenceScorer(STRUCTURE, {0, 5, 9}), **kw)


def test_checkers_pass() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker's complaint is a warning: here it fails the test
        gym_check_env(_env(), skip_render_check=True)
        sb3_check_env(_env(target=(0.3, 0.7)), warn=True)
    assert len(FEATURES) == N_FEATURES


def test_registered_id() -> None:
    assert ENV_ID in gym.registry
    with pytest.raises(RLPruneError, match="give a scorer or a checkpoint"):
        gym.make(ENV_ID)


def _run(env: LayerPruningEnv, actions: list[float], seed: int = 0) -> dict:
    env.reset(seed=seed)
    info: dict = {}
    for i in range(len(env.units)):
        _, _, terminated, truncated, info = env.step(np.array([actions[i % len(actions)]], dtype=np.float32))
        assert terminated == (i == len(env.units) - 1) and not truncated
    return info


@settings(max_examples=40, deadline=None)
@given(
    actions=st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=12),
    target=st.floats(0.3, 0.9),
)
def test_any_actions_meet_the_budget(actions: list[float], target: float) -> None:
    info = _run(_env(target=target), actions)
    assert target - 0.01 - 1e-9 <= info["macs_ratio"] <= target + 1e-9


def test_budget_with_rounding_and_sampled_targets() -> None:
    env = _env(target=(0.4, 0.6), round_to=4)
    for seed in range(5):
        info = _run(env, [np.random.default_rng(seed).uniform(-1, 1)], seed=seed)
        assert info["macs_ratio"] <= info["target"] + 1e-9
        assert info["macs_ratio"] >= info["target"] - 0.03  # coarser with channels in multiples of 4


def test_same_seed_same_target_and_plan() -> None:
    a, b = _env(target=(0.3, 0.7)), _env(target=(0.3, 0.7))
    assert _run(a, [0.2, -0.5], seed=3)["plan"] == _run(b, [0.2, -0.5], seed=3)["plan"]


def test_rewards_only_at_the_end_and_info() -> None:
    env = _env(target=0.5)
    env.reset(seed=0)
    rewards = []
    for _ in range(len(env.units)):
        _, r, _, _, info = env.step(np.array([0.0], dtype=np.float32))
        rewards.append(r)
    assert all(r == 0 for r in rewards[:-1]) and rewards[-1] > 0
    for key in ("accuracy", "macs_ratio", "latency_ratio", "plan", "ratios", "reward"):
        assert key in info


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"reward": "nope"}, "reward 'nope': unknown"),
        ({"target": 1.5}, "target must lie in"),
        ({"target": 0.0}, "target must lie in"),
        ({"min_ratio": 0.6, "max_ratio": 0.4}, "min_ratio < max_ratio"),
        ({"budget": "latency"}, "needs a latency table"),
        ({"target": 0.5, "max_ratio": 0.1}, "is unreachable"),
    ],
)
def test_bad_arguments(kw: dict, match: str) -> None:
    with pytest.raises(RLPruneError, match=match):
        _env(**kw)
