"""``rlprune train`` (an RL agent) and ``rlprune search`` (a baseline searcher): one run directory each.

``runs/<name>/`` holds the resolved config, TensorBoard logs (``tb/``), ``episodes.jsonl`` (every evaluated plan),
``best_plan.json``, ``agent_state.pt`` checkpoints, the final ``policy.safetensors`` + ``policy.json``, and
``summary.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3.common.logger import HParam
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from rlprune.agents.callbacks import SearchCallback
from rlprune.agents.policy_io import save_policy
from rlprune.agents.recorder import SearchRecorder
from rlprune.agents.sb3_agents import make_agent
from rlprune.agents.searchers import get_searcher
from rlprune.checkpoint import load_state, save_state
from rlprune.config import SearchConfig, atomic_write_text, write_resolved
from rlprune.cost.lut import LatencyTable, build_latency_table, measured_latency_ratio
from rlprune.envs.calibration import calibrate_latency_budget
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.evaluation.proxy import ProxyEvaluator, proxy_from_checkpoint
from rlprune.logs import setup_logging
from rlprune.pruning import Plan, Structure
from rlprune.results import is_current, provenance
from rlprune.seeding import seed_everything

log = logging.getLogger("rlprune.search")


def _latency_table(cfg: SearchConfig, structure: Structure, dense_cpu: nn.Module, run_dir: Path) -> LatencyTable:
    """The run's latency table: the saved one when it fits the model and batch size, else built and saved."""
    path = run_dir / "latency_table.json"
    if path.is_file():
        table = LatencyTable.load(path)
        if table.fingerprint == structure.fingerprint and table.batch_size == cfg.latency.batch_size:
            return table
    log.info("building the per-layer latency table (batch %d)", cfg.latency.batch_size)
    table = build_latency_table(dense_cpu, structure, cfg.latency.batch_size, threads=cfg.latency.threads)
    table.save(path)
    return table


def _agent_optimizers(agent: Any) -> dict[str, torch.optim.Optimizer]:
    found = {}
    for name in ("policy.optimizer", "actor.optimizer", "critic.optimizer", "ent_coef_optimizer"):
        obj = agent
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.optim.Optimizer):
            found[name] = obj
    return found


def save_agent_state(agent: Any, path: Path, episodes: int) -> None:
    """Checkpoint the agent as tensors only (policy, optimizers, step count); loaded with ``weights_only``."""
    state: dict[str, Any] = {
        "policy": agent.policy.state_dict(),
        "num_timesteps": agent.num_timesteps,
        "episodes": episodes,
    }
    for name, opt in _agent_optimizers(agent).items():
        state[f"optim:{name}"] = opt.state_dict()
    if getattr(agent, "log_ent_coef", None) is not None:
        state["log_ent_coef"] = agent.log_ent_coef.detach().clone()
    save_state(path, state)


def load_agent_state(agent: Any, path: Path) -> int:
    state = load_state(path)
    agent.policy.load_state_dict(state["policy"])
    for name, opt in _agent_optimizers(agent).items():
        if f"optim:{name}" in state:
            opt.load_state_dict(state[f"optim:{name}"])
    if "log_ent_coef" in state and getattr(agent, "log_ent_coef", None) is not None:
        with torch.no_grad():
            agent.log_ent_coef.copy_(state["log_ent_coef"])
    agent.num_timesteps = int(state["num_timesteps"])
    return int(state["episodes"])


def _prepare(cfg: SearchConfig, run_dir: Path, resume: bool) -> None:
    if (run_dir / "episodes.jsonl").is_file() and not resume:
        raise RLPruneError(f"{run_dir}: a search already ran here; pass --resume to continue it or set another name")
    saved_path = run_dir / "config.yaml"
    if resume and saved_path.is_file():
        # Recorded accuracies are only comparable with new ones if plans are scored and budgeted the same way.
        saved = yaml.safe_load(saved_path.read_text()) or {}
        now = cfg.model_dump(mode="json")
        for section in ("checkpoint", "data_root", "env", "proxy", "latency"):
            if saved.get(section) != now.get(section):
                raise RLPruneError(
                    f"{run_dir}: cannot resume with a different '{section}' than the run was started with "
                    f"({saved.get(section)!r} -> {now.get(section)!r}); set another name"
                )


def complete_search(cfg: SearchConfig, *, searcher: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The summary of the run ``cfg`` names, running or resuming it first unless it already has every episode.

    Benchmarks call this so that running them again finishes an interrupted search and reuses a finished one, but
    only one made by the same request (config, searcher, checkpoint weights, code version; ``request.json`` in the
    run): a run made by any other is moved aside to ``<name>.stale-<time>`` with a warning and searched again.
    """
    run_dir = Path(cfg.output_dir) / cfg.name
    request = search_request(cfg, searcher)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is not None and is_current(summary, request) and summary["episodes"] == cfg.agent.episodes:
        return summary
    recorded = json.loads((run_dir / "request.json").read_text()) if (run_dir / "request.json").is_file() else None
    more_episodes = summary is None or summary["episodes"] < cfg.agent.episodes  # a finished run can be extended
    if run_dir.exists() and not (is_current(recorded, request) and more_episodes):
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = next(
            p for i in range(1, 10_000) if not (p := run_dir.with_name(f"{run_dir.name}.stale-{stamp}-{i}")).exists()
        )
        log.warning("%s: made by another request (config, checkpoint or code); moved to %s", run_dir, aside)
        run_dir.rename(aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "request.json", json.dumps({"provenance": provenance(request)}, indent=1) + "\n")
    summary = run_search(cfg, searcher=searcher, resume=(run_dir / "episodes.jsonl").is_file(), progress=progress)
    summary["provenance"] = provenance(request)
    atomic_write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    return summary


def search_request(cfg: SearchConfig, searcher: str | None) -> dict[str, Any]:
    """What decides a search's result: the config (less where it is written and the episode count, which a resume
    may extend), the searcher and the checkpoint's weights hash (a path names a file, not its contents)."""
    from rlprune.checkpoint import read_meta

    config = cfg.model_dump(mode="json", exclude={"name": True, "output_dir": True, "agent": {"episodes"}})
    return {**config, "searcher": searcher, "weights_sha256": read_meta(cfg.checkpoint).get("weights_sha256")}


def run_search(
    cfg: SearchConfig,
    *,
    searcher: str | None = None,
    resume: bool = False,
    progress: bool = True,
    scorer: Any | None = None,
) -> dict[str, Any]:
    """Run an RL agent (``searcher=None``) or a baseline searcher; returns the summary.

    :param scorer: use this scorer instead of building a proxy evaluator from ``cfg.checkpoint`` (tests).
    """
    run_dir = Path(cfg.output_dir) / cfg.name
    _prepare(cfg, run_dir, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    if scorer is None:
        scorer = proxy_from_checkpoint(
            cfg.checkpoint,
            cfg.data_root,
            device=cfg.device,
            recal_batches=cfg.proxy.recal_batches,
            recal_batch_size=cfg.proxy.recal_batch_size,
            val_images=cfg.proxy.val_images,
            finetune_steps=cfg.proxy.finetune_steps,
            finetune_lr=cfg.proxy.finetune_lr,
            importance=cfg.proxy.importance,
            amp=cfg.proxy.amp,
            seed=cfg.proxy.seed,
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "search.log", verbose=progress)
    write_resolved(cfg, run_dir)
    table, dense_cpu = None, None
    if isinstance(scorer, ProxyEvaluator) and (cfg.env.budget == "latency" or cfg.env.reward == "accuracy_latency"):
        dense_cpu = copy.deepcopy(scorer.model).cpu().eval()  # the scorer keeps its model on its own device
        table = _latency_table(cfg, scorer.structure, dense_cpu, run_dir)
    writer = SummaryWriter(str(run_dir / "tb" / (searcher or "agent"))) if searcher else None
    recorder = SearchRecorder(run_dir, writer)
    if hasattr(scorer, "remember"):
        for rec in recorder.records:
            scorer.remember(Plan.from_dict(rec["plan"]), rec["accuracy"])
    e = cfg.env
    env = LayerPruningEnv(
        scorer,
        target=e.target if isinstance(e.target, float) else tuple(e.target),
        budget=e.budget,
        reward=e.reward,
        reward_weight=e.reward_weight,
        min_ratio=e.min_ratio,
        max_ratio=e.max_ratio,
        round_to=e.round_to,
        min_channels=e.min_channels,
        tolerance=e.tolerance,
        latency_table=table,
        on_episode=recorder,
    )
    if table is not None and table.calibration is None and cfg.latency.calibration_plans > 0:
        log.info("calibrating the latency table on %d plans at the budget", cfg.latency.calibration_plans)
        table = calibrate_latency_budget(
            env, dense_cpu, cfg.latency.calibration_plans, seed=cfg.proxy.seed, threads=cfg.latency.threads
        )
        assert table is not None and table.calibration is not None
        table.save(run_dir / "latency_table.json")
        c = table.calibration
        log.info(
            "latency table: measured ratio of the calibration plans %.3f, predicted %.3f before / %.3f after",
            c["measured_ratio_mean"],
            c["predicted_ratio_mean_before"],
            c["predicted_ratio_mean_after"],
        )
    episodes = cfg.agent.episodes
    started = time.perf_counter()
    prior = recorder.episodes
    log.info(
        "%s on %s: %d units, target %s, %d episodes (%d already recorded)",
        searcher or cfg.agent.algorithm,
        cfg.checkpoint,
        len(env.units),
        e.target,
        episodes,
        prior,
    )
    if searcher:
        recorder.replay = prior
        recorder.bar = tqdm(total=episodes, initial=prior, desc=searcher, unit="ep", disable=not progress)
        get_searcher(searcher, env, cfg.seed).run(episodes)
        recorder.bar.close()
        if recorder.best is not None:
            writer.add_hparams(
                {"searcher": searcher, "episodes": recorder.episodes, "seed": cfg.seed, "target": str(e.target)},
                {"hparams/best_accuracy": recorder.best["accuracy"], "hparams/best_reward": recorder.best["reward"]},
                run_name="hparams",
            )
        writer.close()
    else:
        _train_agent(cfg, env, recorder, run_dir, resume, progress)
    best = recorder.best
    if best is None:
        raise RLPruneError("search evaluated no plan")
    wall = time.perf_counter() - started
    summary = {
        "name": cfg.name,
        "searcher": searcher or cfg.agent.algorithm,
        "episodes": recorder.episodes,
        "best": {k: best[k] for k in ("episode", "reward", "accuracy", "macs_ratio", "latency_ratio", "target")},
        "wall_seconds_this_session": round(wall, 1),
        "wall_seconds": round(recorder.wall_seconds(), 1),
        "seconds_per_episode": round(recorder.wall_seconds() / recorder.episodes, 3),
        "mean_eval_seconds": round(sum(r["eval_seconds"] for r in recorder.records) / recorder.episodes, 3),
    }
    if table is not None:
        # the search steered by the lookup table's predictions; the best plan's latency is also measured for real
        ratio = measured_latency_ratio(
            dense_cpu, env.structure, Plan.from_dict(best["plan"]), cfg.latency.batch_size, threads=cfg.latency.threads
        )
        summary["best"]["measured_latency_ratio"] = round(ratio, 4)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    log.info(
        "best: accuracy %.2f%% at MACs ratio %.3f (episode %d) -> %s",
        best["accuracy"],
        best["macs_ratio"],
        best["episode"],
        run_dir / "best_plan.json",
    )
    return summary


def _train_agent(
    cfg: SearchConfig, env: LayerPruningEnv, recorder: SearchRecorder, run_dir: Path, resume: bool, progress: bool
) -> None:
    algorithm = cfg.agent.algorithm
    agent = make_agent(algorithm, env, cfg.seed, cfg.agent.hyperparams, tensorboard_log=str(run_dir / "tb"))
    state_path = run_dir / "agent_state.pt"
    resumed = resume and state_path.is_file()
    if resumed:
        at = load_agent_state(agent, state_path)
        log.info("resumed the agent from its checkpoint at episode %d", at)
    meta = {
        "min_ratio": cfg.env.min_ratio,
        "max_ratio": cfg.env.max_ratio,
        "round_to": cfg.env.round_to,
        "min_channels": cfg.env.min_channels,
        "budget": cfg.env.budget,
        "target": cfg.env.target,
        "reward": cfg.env.reward,
        "importance": cfg.proxy.importance,
        "trained_on": cfg.checkpoint,
        "config": cfg.model_dump(mode="json"),
    }

    def save() -> None:
        save_agent_state(agent, state_path, recorder.episodes)
        save_policy(run_dir / "policy", agent, algorithm, {**meta, "episodes": recorder.episodes})

    callback = _with_hparams(
        SearchCallback(
            recorder,
            cfg.agent.episodes,
            cfg.agent.checkpoint_every,
            save,
            progress=progress,
        ),
        {
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


def _with_hparams(callback: SearchCallback, hparams: dict[str, Any]) -> SearchCallback:
    original = callback._on_training_start

    def on_start() -> None:
        callback.logger.record(
            "hparams",
            HParam(hparams, {"search/best_reward": 0.0, "search/best_accuracy": 0.0}),
            exclude=("stdout", "log", "json", "csv"),
        )
        original()

    callback._on_training_start = on_start  # type: ignore[method-assign]
    return callback
