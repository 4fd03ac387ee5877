"""A saved policy, reloaded from safetensors + JSON, acts exactly like the agent that was trained; bad files are
refused with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import PreferenceScorer

from rlprune.agents.policy_io import load_policy, save_policy
from rlprune.agents.sb3_agents import make_agent
from rlprune.envs import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.models import build_model
from rlprune.pruning import analyze

STRUCTURE = analyze(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32))
EPISODE = len(STRUCTURE.units)
# a few real updates of each algorithm (small batches, learning from the second episode on)
HYPERPARAMS = {
    "ppo": {
        "n_steps": 2 * EPISODE,
        "batch_size": EPISODE,
        "n_epochs": 2,
        "policy_kwargs": {"net_arch": [32, 32], "activation_fn": torch.nn.ReLU, "log_std_init": -0.5},
    },
    "ddpg": {"learning_starts": EPISODE, "batch_size": 16, "gradient_steps": 4},
    "td3": {"learning_starts": EPISODE, "batch_size": 16, "gradient_steps": 4},
    "sac": {"learning_starts": EPISODE, "batch_size": 16, "gradient_steps": 4},
}


def _env() -> LayerPruningEnv:
    return LayerPruningEnv(PreferenceScorer(STRUCTURE, {0, 5, 9}), target=(0.3, 0.7))


def _observations(n: int = 40) -> np.ndarray:
    """Observations the policy meets: every step of a few episodes at different targets and actions."""
    env, rng, out = _env(), np.random.default_rng(0), []
    while len(out) < n:
        obs, _ = env.reset(seed=len(out))
        done = False
        while not done:
            out.append(obs)
            obs, _, done, _, _ = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
    return np.stack(out[:n])


@pytest.fixture(scope="module", params=sorted(HYPERPARAMS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    algorithm = request.param
    agent = make_agent(algorithm, _env(), seed=0, hyperparams=HYPERPARAMS[algorithm])
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    agent.learn(total_timesteps=3 * EPISODE)
    changed = any(not torch.equal(before[k], v) for k, v in agent.policy.state_dict().items())
    assert changed, "the agent did not learn: the test would compare untrained weights"
    path = tmp_path_factory.mktemp(algorithm) / "policy"
    save_policy(path, agent, algorithm, {"min_ratio": 0.0, "max_ratio": 0.8, "target": [0.3, 0.7]})
    return algorithm, agent, path


def test_reloaded_policy_acts_like_the_trained_agent(trained: tuple) -> None:
    algorithm, agent, path = trained
    policy = load_policy(path)
    assert policy.meta["algorithm"] == algorithm
    for obs in _observations():
        expected, _ = agent.predict(obs, deterministic=True)
        np.testing.assert_array_equal(policy.act(obs), np.asarray(expected, dtype=np.float32).reshape(1))


def test_named_activations_are_rebuilt_and_unknown_ones_refused(trained: tuple, tmp_path: Path) -> None:
    """policy.json names its activation; a name rlprune does not rebuild is refused (never imported from the file,
    and never replaced by a stand-in: Tanh in place of DDPG's ReLU acts differently on the same weights)."""
    algorithm, _, path = trained
    kwargs = json.loads(path.with_suffix(".json").read_text())["policy_kwargs"]
    if algorithm == "ppo":  # trained with an explicit ReLU (SB3's PPO default is Tanh): rebuilt as ReLU
        assert kwargs["activation_fn"] == "torch.nn.modules.activation.ReLU"
        assert any(isinstance(m, torch.nn.ReLU) for m in load_policy(path).policy.modules())
    for name in ("evil.module.Activation", 3):
        with pytest.raises(RLPruneError, match=r"policy_kwargs.activation_fn"):
            load_policy(_copy(path, tmp_path / str(name), policy_kwargs={**kwargs, "activation_fn": name}))


def _copy(path: Path, dest: Path, **meta: object) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "policy.safetensors").write_bytes(path.with_suffix(".safetensors").read_bytes())
    full = json.loads(path.with_suffix(".json").read_text())
    full.update(meta)
    (dest / "policy.json").write_text(json.dumps({k: v for k, v in full.items() if v is not None}))
    return dest


def test_bad_policy_files_are_refused(trained: tuple, tmp_path: Path) -> None:
    algorithm, _, path = trained
    with pytest.raises(RLPruneError, match="not an rlprune policy"):
        load_policy(_copy(path, tmp_path / "fmt", format="something/1"))
    with pytest.raises(RLPruneError, match="feature spec v99"):
        load_policy(_copy(path, tmp_path / "ver", feature_version=99))
    with pytest.raises(RLPruneError, match="'algorithm'"):
        load_policy(_copy(path, tmp_path / "algo", algorithm=None))
    with pytest.raises(RLPruneError, match="algorithm: .*got 'a2c'"):
        load_policy(_copy(path, tmp_path / "a2c", algorithm="a2c"))
    other = "ddpg" if algorithm == "ppo" else "ppo"  # the weights of one algorithm's network in another's
    refusal = rf"(policy_kwargs do not build a {other} policy|\({other} policy\): weights do not fit)"
    with pytest.raises(RLPruneError, match=refusal):
        load_policy(_copy(path, tmp_path / "other", algorithm=other))
    missing = _copy(path, tmp_path / "missing")
    (missing / "policy.safetensors").unlink()
    with pytest.raises(RLPruneError, match="policy weights not found"):
        load_policy(missing)
    corrupt = _copy(path, tmp_path / "corrupt")
    (corrupt / "policy.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RLPruneError, match="unreadable safetensors file"):
        load_policy(corrupt)
    (tmp_path / "nojson").mkdir()
    with pytest.raises(RLPruneError, match=r"nojson/policy.json"):
        load_policy(tmp_path / "nojson")
