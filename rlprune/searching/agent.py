"""Training an RL agent on a search's environment until its episode budget is evaluated, checkpointing it and
saving the policy with the metadata an apply needs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from rlprune.agents.policy_io import Policy, load_policy, network_kwargs, policy_metadata, save_policy
from rlprune.agents.sb3_agents import make_agent
from rlprune.agents.state import load_agent_state, save_agent_state
from rlprune.config import SearchConfig
from rlprune.envs.features import feature_envelope
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import fit_weights
from rlprune.pruning.weights import SPARSE_IMPORTANCE, granularity_label
from rlprune.searching.callbacks import SearchCallback
from rlprune.searching.recorder import SearchRecorder
from rlprune.seeding import RESUME_STREAM, stream_seed

log = logging.getLogger("rlprune.searching.agent")


def starting_policy(cfg: SearchConfig, searcher: str | None = None) -> Policy | None:
    """The policy ``cfg.agent.init_policy`` names, checked against the search before any work: the same algorithm,
    and the env settings that give its actions and observations their meaning (ratio range, rounding, prior, budget
    kind, unit kind). None when the search starts from a fresh network."""
    path = cfg.agent.init_policy
    if path is None:
        return None
    if searcher is not None:
        raise RLPruneError(f"agent.init_policy: only an RL agent starts from a policy, not the searcher '{searcher}'")
    policy = load_policy(path)
    m, e = policy.info, cfg.env
    if m.algorithm != cfg.agent.algorithm:
        raise RLPruneError(
            f"agent.init_policy: {path} is a {m.algorithm} policy; agent.algorithm is {cfg.agent.algorithm}"
        )
    wanted = granularity_label(e.granularity, e.pattern)
    for field, theirs, ours in (
        ("min_ratio", m.min_ratio, e.min_ratio),
        ("max_ratio", m.max_ratio, e.max_ratio),
        ("round_to", m.round_to, e.round_to),
        ("min_channels", m.min_channels, e.min_channels),
        ("prior", m.prior, e.prior),
        ("budget", m.budget, e.budget),
        ("granularity", m.granularity, wanted),
    ):
        if theirs != ours:
            raise RLPruneError(
                f"agent.init_policy: the policy was trained with {field} {theirs}; env.{field} is {ours} (its actions "
                "and observations would mean something else)"
            )
    return policy


def train_agent(
    cfg: SearchConfig,
    env: Any,
    recorder: SearchRecorder,
    run_dir: Path,
    resume: bool,
    progress: bool,
    extra_meta: dict[str, Any] | None = None,
    start: Policy | None = None,
) -> SummaryWriter:
    """Train the agent until the episode budget is evaluated; returns a writer into the agent's TensorBoard run
    (for the figures drawn at the end).

    :param env: a :class:`LayerPruningEnv`, or a :class:`~rlprune.envs.multi.MultiModelEnv` over several models.
    :param extra_meta: more of the policy's metadata (e.g. the models it was trained on).
    :param start: a policy (:func:`starting_policy`) whose network the agent starts from, with its sizes; a resumed
        run continues from its own checkpoint instead."""
    algorithm = cfg.agent.algorithm
    hyperparams = cfg.agent.hyperparams
    if start is not None:
        hyperparams = {**hyperparams, "policy_kwargs": network_kwargs(start.meta, str(cfg.agent.init_policy))}
    features = env.feature_version  # read before a worker pool wraps the env in a VecEnv
    envelope = feature_envelope([e.static for e in getattr(env, "envs", [env])], features)
    # one environment per actor: their terminal evaluations run at once
    n_envs = getattr(getattr(env, "scorer", None), "workers", 1)
    if n_envs > 1:
        from rlprune.searching.pool import pool_vec_env

        env = pool_vec_env(env, n_envs)
    # A resumed session draws fresh randomness (seeded by the records so far): reseeded with the run's seed, an agent
    # killed before its first update would sample the very plans it already recorded.
    seed = stream_seed(cfg.seed, RESUME_STREAM, recorder.episodes)
    agent = make_agent(algorithm, env, seed, hyperparams, tensorboard_log=str(run_dir / "tb"))
    state_path = run_dir / "agent_state.pt"
    resumed = resume and state_path.is_file()
    if resumed:
        at = load_agent_state(agent, state_path)
        log.info("resumed the agent from its checkpoint at episode %d (%d recorded)", at, recorder.episodes)
    elif start is not None:
        fit_weights(agent.policy, start.policy.state_dict(), f"agent.init_policy {cfg.agent.init_policy}")
        log.info("the agent starts from the policy %s", cfg.agent.init_policy)
    meta = {
        "min_ratio": cfg.env.min_ratio,
        "max_ratio": cfg.env.max_ratio,
        "round_to": cfg.env.round_to,
        "min_channels": cfg.env.min_channels,
        "budget": cfg.env.budget,
        "target": cfg.env.target,
        "reward": cfg.env.reward,
        "importance": SPARSE_IMPORTANCE if cfg.env.granularity != "channel" else cfg.proxy.importance,
        "granularity": granularity_label(cfg.env.granularity, cfg.env.pattern),
        "prior": cfg.env.prior,
        "trained_on": cfg.checkpoint,
        "feature_version": features,
        "feature_envelope": envelope,  # what it saw: a rollout on units outside this range is flagged
        "config": cfg.model_dump(mode="json"),
        **(extra_meta or {}),
    }

    # the policy file this run will write, checked now: settings no policy file may hold are refused before any work
    Policy(agent.policy, policy_metadata(agent, algorithm, {**meta, "episodes": recorder.episodes}))

    def save() -> None:
        save_agent_state(agent, state_path, recorder.episodes)
        save_policy(run_dir / "policy", agent, algorithm, {**meta, "episodes": recorder.episodes})

    callback = SearchCallback(
        recorder,
        cfg.agent.episodes,
        cfg.agent.checkpoint_every,
        save,
        progress=progress,
        hparams={
            "algorithm": algorithm,
            "episodes": cfg.agent.episodes,
            "seed": cfg.seed,
            "reward": cfg.env.reward,
            "budget": cfg.env.budget,
            "target": str(cfg.env.target),
            "max_ratio": cfg.env.max_ratio,
        },
    )
    remaining = max(0, cfg.agent.episodes - recorder.episodes)
    if remaining:
        # Upper bound on steps; the callback stops the agent once the episode budget is evaluated.
        agent.learn(
            total_timesteps=agent.num_timesteps + (remaining + 64) * len(env.units),
            callback=callback,
            tb_log_name="agent",
            reset_num_timesteps=not resumed,
        )
    save()
    # the agent's own TensorBoard run when it logged one this session, else the first (a finished run resumed)
    logger = getattr(agent, "_logger", None)  # set by learn(); absent when nothing was left to learn
    logged = logger.get_dir() if logger is not None else None
    return SummaryWriter(logged or str(run_dir / "tb" / "agent_1"))


__all__ = ["starting_policy", "train_agent"]
