"""``rlprune train`` (an RL agent) and ``rlprune search`` (a baseline searcher): one run directory each.

``runs/<name>/`` holds the resolved config, TensorBoard logs (``tb/``), ``episodes.jsonl`` (every evaluated plan),
``best_plan.json``, ``agent_state.pt`` checkpoints, the final ``policy.safetensors`` + ``policy.json``, and
``summary.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from rlprune.agents.callbacks import SearchCallback
from rlprune.agents.policy_io import Policy, save_policy
from rlprune.agents.sb3_agents import make_agent
from rlprune.config import MULTI_MODEL_REWARD, SearchConfig, validate, write_resolved
from rlprune.cost.budget import Budget
from rlprune.cost.calibration import calibrate_latency_budget
from rlprune.cost.lut import LatencyTable, build_latency_table, measured_latency_ratio
from rlprune.envs.features import FEATURE_VERSION, feature_envelope
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.evaluation.proxy import proxy_from_checkpoint, scorer_settings
from rlprune.evaluation.scorer import Scorer
from rlprune.io.checkpoint import load_state, save_state
from rlprune.io.files import atomic_write_text, read_json
from rlprune.io.provenance import is_current, provenance
from rlprune.io.safe import json_safe, locked, read_yaml_file
from rlprune.logs import setup_logging
from rlprune.pruning import Plan, Structure
from rlprune.pruning.weights import SPARSE_IMPORTANCE, granularity_label, kind_and_pattern
from rlprune.report import figures
from rlprune.search.baselines import get_searcher
from rlprune.search.recorder import SearchRecorder
from rlprune.seeding import seed_everything

log = logging.getLogger("rlprune.search.run")


def _latency_table(cfg: SearchConfig, structure: Structure, dense_cpu: nn.Module, run_dir: Path) -> LatencyTable:
    """The run's latency table: the saved one when it fits the model and batch size, else built and saved."""
    path = run_dir / "latency_table.json"
    if path.is_file():
        table = LatencyTable.load(path)
        same = (table.fingerprint, table.batch_size, table.runtime)
        if same == (structure.fingerprint, cfg.latency.batch_size, cfg.latency.runtime):
            return table
    log.info("building the per-layer latency table (batch %d, %s)", cfg.latency.batch_size, cfg.latency.runtime)
    # saved by the caller once the run directory exists (a refused run leaves none behind)
    return build_latency_table(
        dense_cpu, structure, cfg.latency.batch_size, threads=cfg.latency.threads, runtime=cfg.latency.runtime
    )


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


# what a resume may change in the agent section: run more episodes, save the agent at another interval
RESUMABLE_AGENT_KEYS = ("episodes", "checkpoint_every")
IDENTITY = "search.json"  # who searched, on which weights: what a resume must share beyond the config's sections


def weights_hashes(cfg: SearchConfig) -> list[str | None]:
    """The sha256 of each checkpoint's weights (a path names a file, not its contents; a scorer search has none).
    A checkpoint not there is None: a search given its scorer never reads it, and one that needs it says so when
    it loads it."""
    from rlprune.io.checkpoint import checkpoint_paths, read_meta

    paths = cfg.checkpoints if cfg.checkpoints is not None else [cfg.checkpoint] if cfg.checkpoint else []
    return [read_meta(p).get("weights_sha256") if checkpoint_paths(p)[1].is_file() else None for p in paths]


def prepare_run(cfg: SearchConfig, run_dir: Path, resume: bool, searcher: str | None = None) -> dict[str, Any]:
    """Refuse to start over a finished search, or to resume one with settings that would score plans differently,
    search them with another agent or seed, or on other weights under the same checkpoint path.

    :returns: the run's identity (searcher, weights hashes), to be written as ``search.json`` once the run exists.
    """
    identity = {"searcher": searcher or cfg.agent.algorithm, "weights_sha256": weights_hashes(cfg)}
    if (run_dir / "episodes.jsonl").is_file() and not resume:
        raise RLPruneError(f"{run_dir}: a search already ran here", fix="resume_or_rename")
    saved_path = run_dir / "config.yaml"
    if resume and saved_path.is_file():
        # Recorded accuracies are only comparable with new ones if plans are scored and budgeted the same way.
        saved = read_yaml_file(saved_path) or {}
        # defaults filled in: a config saved before a new key existed compares by what it meant (one that does not
        # validate is compared as written, and a section that differs is refused below)
        with contextlib.suppress(ValueError):
            saved = SearchConfig.model_validate(saved).model_dump(mode="json")
        now = cfg.model_dump(mode="json")
        sections = ["checkpoint", "checkpoints", "data_root", "env", "proxy", "latency", "prune", "seed", "agent"]
        for side in (saved, now):
            if isinstance(side.get("agent"), dict):
                side["agent"] = {k: v for k, v in side["agent"].items() if k not in RESUMABLE_AGENT_KEYS}
        if now.get("pre_pruned") or saved.get("pre_pruned"):
            sections += ["pre_pruned"]  # the copies are models of the run, cut by its seed
            for side in (saved, now):  # how often a copy is drawn is not how it is scored
                if isinstance(side.get("pre_pruned"), dict):
                    side["pre_pruned"] = {k: v for k, v in side["pre_pruned"].items() if k != "weight"}
        for section in sections:
            if saved.get(section) != now.get(section):
                raise RLPruneError(
                    f"{run_dir}: cannot resume with a different '{section}' than the run was started with "
                    f"({saved.get(section)!r} -> {now.get(section)!r})",
                    fix="rename",
                )
    if resume and (run_dir / IDENTITY).is_file():
        saved_identity = read_json(run_dir / IDENTITY, "search identity")
        for key, what in (("searcher", "agent or searcher"), ("weights_sha256", "checkpoint weights")):
            before = saved_identity.get(key) if isinstance(saved_identity, dict) else None
            if before is not None and before != identity[key]:
                raise RLPruneError(
                    f"{run_dir}: cannot resume with other {what} than the run was started with "
                    f"({str(before)[:80]} -> {str(identity[key])[:80]})",
                    fix="rename",
                )
    return identity


def record_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """Write ``search.json`` (see :func:`prepare_run`) beside the resolved config."""
    atomic_write_text(run_dir / IDENTITY, json.dumps(identity, indent=1) + "\n")


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
    # >=: several workers finish their episodes together, so a run can hold a few more than asked
    if summary is not None and is_current(summary, request) and summary["episodes"] >= cfg.agent.episodes:
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
    config = cfg.model_dump(mode="json", exclude={"name": True, "output_dir": True, "agent": {"episodes"}})
    hashes = weights_hashes(cfg)
    single = hashes[0] if hashes else None
    return {**config, "searcher": searcher, "weights_sha256": hashes if cfg.checkpoints is not None else single}


# One search per run directory at a time: two would interleave episodes.jsonl and overwrite each other's files.
@locked(lambda a: Path(a["cfg"].output_dir) / a["cfg"].name, "search run directory")
def run_search(
    cfg: SearchConfig,
    *,
    searcher: str | None = None,
    resume: bool = False,
    progress: bool = True,
    scorer: Scorer | Mapping[str, Scorer] | None = None,
    workers: int | None = None,
    trust_model_code: bool = False,
) -> dict[str, Any]:
    """Run an RL agent (``searcher=None``) or a baseline searcher; returns the summary.

    :param scorer: use this scorer instead of building a proxy evaluator from ``cfg.checkpoint``; a dict of named
        scorers trains one policy over all of their models, like ``cfg.checkpoints``.
    :param workers: score plans on this many Ray actors (default ``cfg.workers``; 1 = in this process).
    :param trust_model_code: import model code the checkpoint names (see :mod:`rlprune.io.trust`).
    """
    workers = cfg.workers if workers is None else workers
    if cfg.policy is not None:
        raise RLPruneError("policy: a search learns a policy; applying one is rlprune run (or rlprune apply)")
    several = isinstance(scorer, Mapping)
    if cfg.checkpoints is not None or several:
        from rlprune.search.multi import search_models

        if searcher is not None or workers > 1 or (scorer is not None and not several):
            raise RLPruneError(
                "a search over several models trains one RL policy in this process: no baseline searcher, "
                "workers or single scorer",
                fix="several_checkpoints",
            )
        if several and (cfg.checkpoints is not None or cfg.checkpoint is not None or cfg.pre_pruned is not None):
            raise RLPruneError("search: give named scorers or checkpoints (and pre_pruned copies of them), not both")
        scorers = cast("Mapping[str, Scorer]", scorer) if several else None
        return search_models(cfg, resume=resume, progress=progress, trust_model_code=trust_model_code, scorers=scorers)
    if workers > 1 and not hasattr(scorer, "prefetch"):
        from rlprune.search.pool import run_pooled

        return run_pooled(
            _search,
            cfg,
            workers,
            scorer,
            searcher=searcher,
            resume=resume,
            progress=progress,
            trust_model_code=trust_model_code,
        )
    return _search(
        cfg, searcher=searcher, resume=resume, progress=progress, scorer=scorer, trust_model_code=trust_model_code
    )


def _search(
    cfg: SearchConfig,
    *,
    searcher: str | None,
    resume: bool,
    progress: bool,
    scorer: Scorer | None,
    trust_model_code: bool,
) -> dict[str, Any]:
    """:func:`run_search` once its run directory is locked and its scorer (in-process or a worker pool) chosen."""
    run_dir = Path(cfg.output_dir) / cfg.name
    identity = prepare_run(cfg, run_dir, resume, searcher)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    if scorer is None:
        scorer = build_scorer(cfg, cfg.checkpoint, trust_model_code)
    budget, dense_cpu = _budget(cfg, scorer, run_dir)  # refuses an unreachable target: before the run dir exists
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "search.log", verbose=progress)
    write_resolved(cfg, run_dir)
    record_identity(run_dir, identity)
    writer = SummaryWriter(str(run_dir / "tb" / (searcher or "agent"))) if searcher else None
    if writer is not None:
        figures.add_search_layout(writer)
    recorder = SearchRecorder(run_dir, writer, structure=scorer.structure, budget=cfg.env.budget)
    if hasattr(scorer, "remember"):  # a resumed search re-evaluates no recorded plan
        for rec in recorder.records:  # with its metrics when several were recorded (a reward may read them)
            extra = {"metrics": rec["metrics"]} if rec.get("metrics") else {}
            scorer.remember(Plan.from_dict(rec["plan"]), rec["accuracy"], **extra)
    if budget.latency_table is not None:
        budget = _calibrated(cfg, budget, dense_cpu, run_dir)
    e = cfg.env
    env = LayerPruningEnv(
        scorer,
        budget=budget,
        reward=e.reward,
        reward_weight=e.reward_weight,
        prior=e.prior,
        on_episode=recorder,
        features=resumed_features(run_dir) if resume else FEATURE_VERSION,
    )
    started = time.perf_counter()
    log.info(
        "%s on %s: %d units, target %s, %d episodes (%d already recorded)",
        searcher or cfg.agent.algorithm,
        cfg.checkpoint,
        len(env.units),
        e.target,
        cfg.agent.episodes,
        recorder.episodes,
    )
    if searcher:
        _run_baseline(cfg, searcher, env, recorder, writer, progress)
    else:
        writer = train_agent(cfg, env, recorder, run_dir, resume, progress)
    if recorder.best is None:
        raise RLPruneError("search evaluated no plan")
    uniform = uniform_reference(env)
    figures.write_search_figures(
        run_dir, recorder.records, env.structure, target=e.target, budget=e.budget, uniform=uniform, writer=writer
    )
    writer.close()
    summary = _summary(cfg, searcher, recorder, uniform, time.perf_counter() - started)
    if budget.latency_table is not None:
        # the search steered by the lookup table's predictions; the best plan's latency is also measured for real
        ratio = measured_latency_ratio(
            dense_cpu,
            env.structure,
            Plan.from_dict(recorder.best["plan"]),
            cfg.latency.batch_size,
            threads=cfg.latency.threads,
            runtime=cfg.latency.runtime,
        )
        summary["best"]["measured_latency_ratio"] = round(ratio, 4)
    atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n")
    best = recorder.best
    log.info(
        "best: accuracy %.2f%% at %s ratio %.3f (episode %d) -> %s",
        best["accuracy"],
        e.budget if e.budget != "macs" else "MACs",
        best.get("budget_cost", best["macs_ratio"]),
        best["episode"],
        run_dir / "best_plan.json",
    )
    return summary


def resumed_features(run_dir: Path) -> int:
    """The feature set a resumed search's agent was built for (its saved policy's), so that an agent saved by an
    older rlprune keeps its input size; the current set when nothing was saved yet."""
    path = run_dir / "policy.json"
    if not path.is_file():
        return FEATURE_VERSION
    version = read_json(path, "policy metadata").get("feature_version", FEATURE_VERSION)
    return version if isinstance(version, int) else FEATURE_VERSION


def build_scorer(cfg: SearchConfig, checkpoint: str | None, trust_model_code: bool = False) -> Scorer:
    """The built-in proxy scorer for one dense checkpoint with the config's proxy, prune and granularity settings
    (one per model in a search over several)."""
    if checkpoint is None:
        raise RLPruneError("search: give a checkpoint (the dense model) or a scorer")
    return proxy_from_checkpoint(
        checkpoint,
        cfg.data_root,
        device=cfg.device,
        trust_model_code=trust_model_code,
        **scorer_settings(cfg),
    )


def build_budget(cfg: SearchConfig, structure: Structure, latency_table: LatencyTable | None = None) -> Budget:
    """The config's budget (``env`` section) over one model's units; refuses an unreachable target."""
    e = cfg.env
    return Budget(
        structure,
        e.target if isinstance(e.target, float) else tuple(e.target),
        kind=e.budget,
        min_ratio=e.min_ratio,
        max_ratio=e.max_ratio,
        round_to=e.round_to,
        min_channels=e.min_channels,
        tolerance=e.tolerance,
        latency_table=latency_table,
    )


def _budget(cfg: SearchConfig, scorer: Scorer, run_dir: Path) -> tuple[Budget, nn.Module | None]:
    """The search's budget and, for a latency budget or reward, the dense model on the CPU its table was built for."""
    table, dense_cpu = None, None
    if cfg.env.budget == "latency" or cfg.env.reward == "accuracy_latency":
        model = getattr(scorer, "model", None)
        if model is None:
            raise RLPruneError("search: a latency budget or reward needs a scorer that holds the dense model")
        dense_cpu = copy.deepcopy(model).cpu().eval()  # the scorer keeps its model on its own device
        table = _latency_table(cfg, scorer.structure, dense_cpu, run_dir)
        if cfg.latency.runtime != "torch" and cfg.env.round_to is None:
            # benchmarks/results/latency_vs_macs.md: unrounded plans ran at 0.93-0.94x of dense in ONNX Runtime
            # fp32 and slower than dense in int8, and the lookup table mispredicted them by ~25%
            log.warning(
                "latency in %s with env.round_to unset: its kernels block channels by the CPU's vector width, and "
                "other channel counts run far slower than their MACs say; set env.round_to: 8",
                cfg.latency.runtime,
            )
    return build_budget(cfg, scorer.structure, table), dense_cpu


def _calibrated(cfg: SearchConfig, budget: Budget, dense_cpu: nn.Module | None, run_dir: Path) -> Budget:
    """Save the run's latency table, refitted first on plans at the budget timed for real unless it already was."""
    table = budget.latency_table
    assert table is not None and dense_cpu is not None
    if table.calibration is None and cfg.latency.calibration_plans > 0:
        log.info("calibrating the latency table on %d plans at the budget", cfg.latency.calibration_plans)
        budget = calibrate_latency_budget(
            budget, dense_cpu, cfg.latency.calibration_plans, seed=cfg.proxy.seed, threads=cfg.latency.threads
        )
        table = budget.latency_table
        assert table is not None and table.calibration is not None
        c = table.calibration
        log.info(
            "latency table: measured ratio of the calibration plans %.3f, predicted %.3f before / %.3f after",
            c["measured_ratio_mean"],
            c["predicted_ratio_mean_before"],
            c["predicted_ratio_mean_after"],
        )
    table.save(run_dir / "latency_table.json")
    return budget


def _run_baseline(
    cfg: SearchConfig, searcher: str, env: LayerPruningEnv, recorder: SearchRecorder, writer: Any, progress: bool
) -> None:
    """Play a baseline searcher's episodes (a resumed one re-plays what is recorded, answered from the cache)."""
    recorder.follow(cfg.agent.episodes, searcher, progress, replay=recorder.episodes)
    try:
        get_searcher(searcher, env, cfg.seed).run(cfg.agent.episodes)
    finally:
        recorder.close()
    if recorder.best is not None:
        writer.add_hparams(
            {"searcher": searcher, "episodes": recorder.episodes, "seed": cfg.seed, "target": str(cfg.env.target)},
            {"hparams/best_accuracy": recorder.best["accuracy"], "hparams/best_reward": recorder.best["reward"]},
            run_name="hparams",
        )


def _summary(
    cfg: SearchConfig, searcher: str | None, recorder: SearchRecorder, uniform: dict[str, Any], wall: float
) -> dict[str, Any]:
    best = recorder.best
    assert best is not None
    return {
        "name": cfg.name,
        "searcher": searcher or cfg.agent.algorithm,
        "episodes": recorder.episodes,
        "best": {
            k: best[k]
            for k in ("episode", "reward", "accuracy", "macs_ratio", "latency_ratio", "target", "budget_cost")
            if k in best
        },
        "budget": cfg.env.budget,
        "wall_seconds_this_session": round(wall, 1),
        "wall_seconds": round(recorder.wall_seconds(), 1),
        "seconds_per_episode": round(recorder.wall_seconds() / recorder.episodes, 3),
        "mean_eval_seconds": round(sum(r["eval_seconds"] for r in recorder.records) / recorder.episodes, 3),
        "uniform": uniform,
    }


def train_agent(
    cfg: SearchConfig,
    env: Any,
    recorder: SearchRecorder,
    run_dir: Path,
    resume: bool,
    progress: bool,
    extra_meta: dict[str, Any] | None = None,
) -> SummaryWriter:
    """Train the agent until the episode budget is evaluated; returns a writer into the agent's TensorBoard run
    (for the figures drawn at the end).

    :param env: a :class:`LayerPruningEnv`, or a :class:`~rlprune.envs.multi.MultiModelEnv` over several models.
    :param extra_meta: more of the policy's metadata (e.g. the models it was trained on)."""
    algorithm = cfg.agent.algorithm
    features = env.feature_version  # read before a worker pool wraps the env in a VecEnv
    envelope = feature_envelope([e.static for e in getattr(env, "envs", [env])], features)
    # one environment per actor: their terminal evaluations run at once
    n_envs = getattr(getattr(env, "scorer", None), "workers", 1)
    if n_envs > 1:
        from rlprune.search.pool import pool_vec_env

        env = pool_vec_env(env, n_envs)
    # A resumed session draws fresh randomness (seeded by the records so far): reseeded with the run's seed, an agent
    # killed before its first update would sample the very plans it already recorded.
    seed = (cfg.seed + 7919 * recorder.episodes) % 2**32 if recorder.episodes else cfg.seed  # SB3 seeds < 2**32
    agent = make_agent(algorithm, env, seed, cfg.agent.hyperparams, tensorboard_log=str(run_dir / "tb"))
    state_path = run_dir / "agent_state.pt"
    resumed = resume and state_path.is_file()
    if resumed:
        at = load_agent_state(agent, state_path)
        log.info("resumed the agent from its checkpoint at episode %d (%d recorded)", at, recorder.episodes)
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


@dataclass
class SearchResult:
    """What a search produced.

    :param run_dir: where everything was written (``episodes.jsonl``, ``best_plan.json``, ``summary.json``, TensorBoard
        logs, and for RL agents ``policy.safetensors`` + ``policy.json``).
    :param best_plan: the best plan found (highest reward), with the kept channels per unit.
    :param policy: the learned policy (RL agents only), ready for :func:`rlprune.apply_policy` on other models.
    :param records: every evaluated plan, in order (one dict per episode, as in ``episodes.jsonl``).
    :param summary: the run's summary (best score, episodes, seconds).
    """

    run_dir: Path
    best_plan: Plan
    policy: Policy | None
    records: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def best(self) -> dict[str, Any]:
        """The best episode's record (score, MACs ratio, reward, ...)."""
        return max(self.records, key=lambda r: r["reward"])


AGENTS = ("ppo", "ddpg", "sac", "td3")


def search(
    scorer: Scorer | Mapping[str, Scorer],
    *,
    target: float | tuple[float, float] = 0.5,
    agent: str = "ppo",
    episodes: int = 300,
    out_dir: str | Path = "runs/search",
    seed: int = 0,
    budget: str = "macs",
    reward: str | None = None,
    min_ratio: float = 0.0,
    max_ratio: float = 0.8,
    round_to: int | Literal["auto"] | None = None,
    hyperparams: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = False,
    **options: Any,
) -> SearchResult:
    """Search per-layer pruning ratios for the model ``scorer`` scores, with an RL agent or a baseline.

    :param scorer: scores a plan (:class:`~rlprune.MetricScorer` around your own metric, or the built-in proxy). A
        dict of named scorers (several models, e.g. ``{"small": s1, "wide": s2}``) trains one RL policy over all of
        them, each episode drawing a model and a target in ``target``'s range: a policy to apply to models it never
        saw (docs/generalize.md).
    :param target: pruned/dense cost ratio to meet (or a ``(low, high)`` range: one target per episode).
    :param agent: ``ppo`` (default), ``ddpg``, ``sac``, ``td3``, or a baseline: ``random``, ``evolution``,
        ``uniform``.
    :param episodes: plans to evaluate.
    :param reward: ``accuracy`` for one model; with several, ``gain_over_uniform`` (the default: raw accuracies of
        different models are not on one scale) or ``retention``.
    :param budget: ``macs``, ``latency`` or ``params``; a weight-level scorer (``MetricScorer(...,
        granularity="unstructured")``) searches per-layer sparsity on a ``params`` budget.
    :param round_to: keep channel counts a multiple of this (8 suits ONNX Runtime on x86, fp32 and int8);
        ``"auto"``: this CPU's fp32 vector width (16 with AVX-512: faster still in fp32, but coarser steps that cost
        accuracy; docs/compression.md).
    :param out_dir: the run directory (created; an existing search there is refused unless ``resume``).
    :param options: further :class:`~rlprune.config.SearchConfig` sections, e.g. ``latency={"batch_size": 8}`` or
        ``env={"tolerance": 0.02}`` (merged over the arguments above).
    :returns: a :class:`SearchResult`.

    Example::

        result = rp.search(scorer, target=0.5, agent="ppo", episodes=60, out_dir="runs/mine")
        pruned, plan = rp.prune(model, result.best_plan, example_inputs)
    """
    from rlprune.search.baselines import SEARCHERS

    if agent not in AGENTS and agent not in SEARCHERS:
        raise RLPruneError(f"agent '{agent}': expected one of {', '.join(AGENTS + tuple(sorted(SEARCHERS)))}")
    out = Path(out_dir)
    several = isinstance(scorer, Mapping)
    scorers = list(scorer.values()) if isinstance(scorer, Mapping) else [scorer]
    if not scorers:
        raise RLPruneError("search: give at least one named scorer")
    first = scorers[0]
    if len({s.structure.granularity for s in scorers}) > 1 or len({s.importance for s in scorers}) > 1:
        raise RLPruneError("search: the scorers of several models must share one granularity and importance")
    if several and budget == "latency":
        raise RLPruneError("search: several models take MACs or parameter budgets, not latency")
    if several and agent not in AGENTS:
        raise RLPruneError(f"search: several models train one RL policy ({', '.join(AGENTS)}), not '{agent}'")
    reward = reward or (MULTI_MODEL_REWARD if several else "accuracy")
    kind, pattern = kind_and_pattern(first.structure.granularity)
    if kind != "channel" and budget == "macs":
        budget = "params"  # a weight-level scorer's plans save parameters (the only budget they can meet)
    env = {
        "granularity": kind,
        "pattern": pattern,
        "target": list(target) if isinstance(target, tuple | list) else target,
        "budget": budget,
        "reward": reward,
        "min_ratio": min_ratio,
        "max_ratio": max_ratio,
        "round_to": round_to,
        **options.pop("env", {}),
    }
    raw: dict[str, Any] = {
        "name": out.name,
        "output_dir": str(out.parent),
        "seed": seed,
        "env": env,
        # a weight-level scorer's importance is its own (magnitude); the config keeps the channel default
        "proxy": {**({"importance": first.importance} if kind == "channel" else {}), **options.pop("proxy", {})},
        "agent": {
            "algorithm": agent if agent in AGENTS else "ppo",
            "episodes": episodes,
            "hyperparams": hyperparams or {},
            **options.pop("agent", {}),
        },
        **options,
    }
    cfg = validate(SearchConfig, raw, "search")
    summary = run_search(
        cfg, searcher=None if agent in AGENTS else agent, resume=resume, progress=progress, scorer=scorer
    )
    return load_result(out, summary)


def load_result(run_dir: str | Path, summary: dict[str, Any] | None = None) -> SearchResult:
    """The :class:`SearchResult` of a finished run directory."""
    run_dir = Path(run_dir)
    if summary is None:
        summary = read_json(run_dir / "summary.json", "search summary")
    records = SearchRecorder(run_dir).records
    policy = Policy.load(run_dir) if (run_dir / "policy.json").is_file() else None
    return SearchResult(run_dir, Plan.load(run_dir / "best_plan.json"), policy, records, summary)


def uniform_reference(env: LayerPruningEnv) -> dict[str, Any]:
    """The uniform plan at the search's target (its mid-point for a range), scored like every searched plan but not
    recorded as an episode: the baseline the search scatter and the summary compare against."""
    low, high = env.target_range
    plan = env.budget.uniform_plan((low + high) / 2, importance=env.scorer.importance)
    result = env.scorer(plan)
    latency = env.budget.latency_ratio(plan.channels)
    return {
        "accuracy": round(float(result.accuracy), 4),
        "budget_cost": round(env.budget.cost(plan.channels), 5),
        "macs_ratio": round(env.budget.macs_ratio(plan.channels), 5),
        "latency_ratio": None if math.isnan(latency) else round(latency, 5),
    }


__all__ = [
    "AGENTS",
    "SearchResult",
    "build_budget",
    "build_scorer",
    "complete_search",
    "load_result",
    "prepare_run",
    "record_identity",
    "resumed_features",
    "run_search",
    "search",
    "search_request",
    "train_agent",
    "uniform_reference",
]
