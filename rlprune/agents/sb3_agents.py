"""stable-baselines3 agents by name, with defaults suited to short episodic problems with a terminal reward."""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise

from rlprune.agents.replay import EpisodeRewardReplayBuffer
from rlprune.errors import RLPruneError

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "ddpg": DDPG, "sac": SAC, "td3": TD3}


def policy_class(algorithm: str) -> type:
    """The policy network class an algorithm's ``MlpPolicy`` resolves to (to rebuild a saved policy)."""
    algo = ALGORITHMS.get(algorithm)
    if algo is None:
        raise RLPruneError(f"agent '{algorithm}': unknown (expected one of {', '.join(sorted(ALGORITHMS))})")
    return algo.policy_aliases["MlpPolicy"]


def default_hyperparams(
    algorithm: str, episode_length: int, warmup_episodes: int = 20, n_envs: int = 1
) -> dict[str, Any]:
    """Defaults for a short episodic problem with a terminal reward, small networks. PPO: gamma 1 and GAE lambda 1
    (every step gets the Monte-Carlo return), rollouts a whole number of episodes. Off-policy agents: each transition
    carries the episode's final reward and gamma is 0 (``rlprune.agents.replay``).

    PPO's learning rate (3e-3) and clip range (0.3) are above SB3's (3e-4, 0.2): a search has only ~300 episodes
    (the sweep behind them: benchmarks/results/agent_sweep_surrogate.md).

    With ``n_envs`` parallel environments (``search.workers``) PPO still updates about every 8 episodes (each
    environment contributes ``ceil(8 / n_envs)``); off-policy agents train every ``episode_length`` steps of all
    environments (their episodes run in lockstep), as SB3 allows episode-counted training with one env only."""
    if algorithm == "ppo":
        n_steps = episode_length * -(-8 // n_envs)
        rollout = n_steps * n_envs
        return {
            "n_steps": n_steps,
            "batch_size": rollout // 2 if rollout >= 32 else rollout,
            "n_epochs": 10,
            "gamma": 1.0,
            "gae_lambda": 1.0,
            "ent_coef": 0.005,
            "learning_rate": 3e-3,
            "clip_range": 0.3,
            "policy_kwargs": {"net_arch": [64, 64], "log_std_init": -0.5},
        }
    # Off-policy agents learn from replayed transitions that all carry the episode's final reward, with gamma 0: a
    # critic that regresses the outcome instead of bootstrapping it (see rlprune.agents.replay).
    common = {
        "gamma": 0.0,
        "replay_buffer_class": EpisodeRewardReplayBuffer,
        "learning_starts": warmup_episodes * episode_length,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "policy_kwargs": {"net_arch": [64, 64]},
        "train_freq": (1, "episode") if n_envs == 1 else (episode_length, "step"),
        "gradient_steps": episode_length,
    }
    if algorithm == "sac":
        return {**common, "ent_coef": "auto"}
    return common


def make_agent(
    algorithm: str,
    env: Any,
    seed: int,
    hyperparams: dict[str, Any] | None = None,
    tensorboard_log: str | None = None,
    noise_sigma: float = 0.3,
) -> BaseAlgorithm:
    """Build an SB3 agent on ``env``; ``hyperparams`` override the defaults key by key."""
    algo = ALGORITHMS.get(algorithm)
    if algo is None:
        raise RLPruneError(f"agent '{algorithm}': unknown (expected one of {', '.join(sorted(ALGORITHMS))})")
    length = getattr(env, "episode_length", None) or (
        len(env.unwrapped.units) if hasattr(env, "unwrapped") else len(env.units)
    )
    n_envs = getattr(env, "num_envs", 1)
    params = {**default_hyperparams(algorithm, length, n_envs=n_envs), **(hyperparams or {})}
    if algorithm in ("ddpg", "td3"):
        params.setdefault("action_noise", NormalActionNoise(np.zeros(1), noise_sigma * np.ones(1)))
    if isinstance(params.get("train_freq"), list):
        params["train_freq"] = tuple(params["train_freq"])
    try:
        return algo("MlpPolicy", env, seed=seed, verbose=0, tensorboard_log=tensorboard_log, device="cpu", **params)
    except (TypeError, ValueError, AssertionError) as exc:  # SB3 checks its settings with asserts
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise RLPruneError(f"agent.hyperparams: not accepted by {algorithm} ({why})") from exc
