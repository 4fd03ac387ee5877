"""A generalist policy: one RL agent trained on several dense models and a range of budgets at once.

A policy that has seen one model at one budget learns that model (on a deeper ResNet or an Inception-style net the
single-model ResNet-20 policy falls below the uniform plan). Here every episode draws a model and a target, the
reward is relative (by default the gain over the uniform plan at the same target on the same model, measured by the
same scorer) and the observation is the depth- and width-invariant feature set, so what the agent learns is how to
distribute a cut, not where one network's slack happens to be.

``runs/<name>/`` holds what a one-model search holds (config, ``episodes.jsonl`` with each episode's ``model``,
``policy.safetensors`` + ``policy.json`` recording the models and the target range, TensorBoard logs) and a
``summary.json`` with per-model statistics and reference scores. ``best_plan.json`` is the highest-reward plan of
any model (a plan for one of them): the product of such a run is the policy, applied with ``rlprune apply``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rlprune.config import EnvConfig, PrePrunedConfig, SearchConfig, model_label, write_resolved
from rlprune.data import BatchLoader
from rlprune.envs.features import FEATURE_VERSION
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.envs.multi import MultiModelEnv
from rlprune.errors import RLPruneError
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.io.files import atomic_write_text, read_json
from rlprune.io.provenance import tensors_sha256
from rlprune.io.safe import json_safe
from rlprune.logs import setup_logging
from rlprune.pruning import Plan, prune
from rlprune.search.recorder import SearchRecorder
from rlprune.seeding import seed_everything
from rlprune.training.loop import finetune

if TYPE_CHECKING:
    from rlprune.evaluation.proxy import ProxyEvaluator

log = logging.getLogger("rlprune.search.multi")


def model_envs(
    cfg: SearchConfig, trust_model_code: bool, features: int = FEATURE_VERSION
) -> tuple[list[LayerPruningEnv], list[dict[str, Any]]]:
    """One environment per checkpoint of ``cfg.checkpoints`` (and per pre-pruned copy of each, ``cfg.pre_pruned``),
    each with its own proxy scorer (data and model built once per model) and budget over ``cfg.env``'s target range;
    the episode recorder is attached afterwards. Returns the environments and, for each, where its model came from
    (its checkpoint; for a copy also its number, MACs ratio and the ratios it was cut by)."""
    from rlprune.evaluation.proxy import ProxyEvaluator, scorer_settings
    from rlprune.search.run import build_scorer

    assert cfg.checkpoints is not None
    envs, sources = [], []
    for index, checkpoint in enumerate(cfg.checkpoints):
        scorer = build_scorer(cfg, checkpoint, trust_model_code)
        label = model_label(checkpoint)
        envs.append(_model_env(cfg, scorer, label, features))
        sources.append({"checkpoint": checkpoint})
        pp = cfg.pre_pruned
        for copy in range(1, pp.copies + 1) if pp is not None else ():
            assert pp is not None and isinstance(scorer, ProxyEvaluator)
            seed = [cfg.seed, index, copy]  # the same copies on a resumed run
            model, plan = pre_pruned_model(scorer, pp, np.random.default_rng(seed), cfg.env, seed=cfg.seed + copy)
            copy_scorer = ProxyEvaluator(model, scorer.splits, device=cfg.device, **scorer_settings(cfg))
            name = f"{label}-pruned{copy}"
            source = {
                "checkpoint": checkpoint,
                "pre_pruned": copy,
                "weight": pp.weight,
                "macs_ratio": round(copy_scorer.structure.total_macs / scorer.structure.total_macs, 4),
                "ratios": [round(r, 4) for r in plan.ratios.values()],
                "weights_sha256": tensors_sha256(model),  # a resumed run must rebuild this very copy
            }
            try:
                envs.append(_model_env(cfg, copy_scorer, name, features))
            except RLPruneError as exc:
                raise RLPruneError(
                    f"pre_pruned: copy {name} ({source['macs_ratio']:.2f} of {label}'s MACs; its targets are relative "
                    f"to it): {exc}; lower pre_pruned.max_ratio or env.round_to"
                ) from None
            sources.append(source)
    return envs, sources


def _model_env(cfg: SearchConfig, scorer: Any, name: str, features: int) -> LayerPruningEnv:
    from rlprune.search.run import build_budget

    e = cfg.env
    return LayerPruningEnv(
        scorer,
        budget=build_budget(cfg, scorer.structure),
        reward=e.reward,
        reward_weight=e.reward_weight,
        name=name,
        features=features,
        prior=e.prior,
    )


def pre_pruned_model(
    scorer: ProxyEvaluator, pp: PrePrunedConfig, rng: np.random.Generator, env: EnvConfig, seed: int = 0
) -> tuple[nn.Module, Plan]:
    """A copy of ``scorer``'s dense model pruned for real by random per-unit ratios in ``[0, pp.max_ratio]`` (rounded
    and floored as ``env`` says), healed by ``pp.heal_steps`` SGD steps on augmented training batches with the loss
    of rlprune's fine-tunes (half cross-entropy, half distillation from the dense model), whose BN statistics are
    then those training left (or, without healing, recalibrated): a trained-looking network with uneven widths, to
    train a policy on. Deterministic for a given ``rng``, ``seed``, device and thread count."""
    ratios = rng.uniform(0.0, pp.max_ratio, len(scorer.structure.units)).tolist()
    plan = scorer.plan(ratios, round_to=env.round_to, min_channels=env.min_channels)
    model, plan = prune(
        scorer.model, plan, scorer.example, importance=scorer.importance, calibration=scorer.calibration
    )
    model.to(memory_format=torch.contiguous_format)
    if pp.heal_steps:
        loader = scorer.training_loader(pp.heal_batch_size, seed + 15485863, channels_last=False)
        steps = _Steps(loader, pp.heal_steps)
        finetune(model, steps, lr=pp.heal_lr, teacher=scorer.model, device=scorer.device, seed=seed)
    else:
        recalibrate_bn(model, scorer.recal)
    return model.eval(), plan


class _Steps:
    """The first ``steps`` batches of a loader, over as many passes as that takes (sized: a cosine schedule)."""

    def __init__(self, loader: BatchLoader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        done, epoch = 0, 0
        while done < self.steps:
            self.loader.set_epoch(epoch)
            for batch in self.loader:
                if done == self.steps:
                    return
                yield batch
                done += 1
            if done == 0:
                raise RLPruneError("pre_pruned: the training split yields no full batch (lower heal_batch_size)")
            epoch += 1


def scorer_envs(
    cfg: SearchConfig, scorers: Mapping[str, Any], features: int = FEATURE_VERSION
) -> tuple[list[LayerPruningEnv], list[dict[str, Any]]]:
    """One environment per named scorer (your own models and metrics, :func:`rlprune.search` with a dict), each with
    its budget over ``cfg.env``'s target range; sources name no checkpoint."""
    if not scorers:
        raise RLPruneError("search: give at least one named scorer")
    for name in scorers:
        if not isinstance(name, str) or not name.strip():
            raise RLPruneError(f"search: each scorer needs a non-empty name, got {name!r}")
    return [_model_env(cfg, scorer, name, features) for name, scorer in scorers.items()], [{} for _ in scorers]


def search_models(
    cfg: SearchConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    trust_model_code: bool = False,
    scorers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one RL policy over every checkpoint in ``cfg.checkpoints`` (or every scorer of ``scorers``, by name);
    returns the summary (also written to ``summary.json``). Called by :func:`rlprune.search.run.run_search`, which
    holds the run directory's lock."""
    from rlprune.search.run import prepare_run, record_identity, resumed_features, train_agent

    run_dir = Path(cfg.output_dir) / cfg.name
    identity = prepare_run(cfg, run_dir, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    features = resumed_features(run_dir) if resume else FEATURE_VERSION
    # every checkpoint loads and analyzes (and every copy is cut) before the run dir exists
    if scorers is not None:
        envs, sources = scorer_envs(cfg, scorers, features)
    else:
        envs, sources = model_envs(cfg, trust_model_code, features)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "search.log", verbose=progress)
    _same_copies(run_dir, envs, sources, resume)
    write_resolved(cfg, run_dir)
    record_identity(run_dir, identity)
    recorder = SearchRecorder(run_dir, None, structure=None, budget=cfg.env.budget)
    for env in envs:
        env.on_episode = recorder
        for rec in recorder.records:  # a resumed search re-evaluates no recorded plan
            if rec.get("model") == env.name and hasattr(env.scorer, "remember"):
                env.scorer.remember(Plan.from_dict(rec["plan"]), rec["accuracy"], metrics=rec.get("metrics"))
    multi = MultiModelEnv(envs, weights=[source.get("weight", 1.0) for source in sources])  # copies: pre_pruned.weight
    log.info(
        "%s over %d models (%s), targets %s, reward %s, %d episodes (%d already recorded)",
        cfg.agent.algorithm,
        len(envs),
        ", ".join(f"{e.name}: {len(e.units)} units" for e in envs),
        cfg.env.target,
        cfg.env.reward,
        cfg.agent.episodes,
        recorder.episodes,
    )
    started = time.perf_counter()
    models = [
        {"name": e.name, **source, "fingerprint": e.structure.fingerprint, "units": len(e.units)}
        for e, source in zip(envs, sources, strict=True)
    ]
    writer = train_agent(cfg, multi, recorder, run_dir, resume, progress, extra_meta={"models": models})
    writer.close()
    if recorder.best is None:
        raise RLPruneError("search evaluated no plan")
    summary = {
        "name": cfg.name,
        "searcher": cfg.agent.algorithm,
        "episodes": recorder.episodes,
        "reward": cfg.env.reward,
        "target": cfg.env.target,
        "models": [
            {**m, **_model_stats(recorder.records, m["name"]), **_refs(e)} for m, e in zip(models, envs, strict=True)
        ],
        "wall_seconds_this_session": round(time.perf_counter() - started, 1),
        "wall_seconds": round(recorder.wall_seconds(), 1),
        "seconds_per_episode": round(recorder.wall_seconds() / recorder.episodes, 3),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n")
    log.info("policy over %d models -> %s", len(envs), run_dir / "policy.json")
    return summary


def _same_copies(run_dir: Path, envs: list[LayerPruningEnv], sources: list[dict[str, Any]], resume: bool) -> None:
    """Record the pre-pruned copies (``copies.json``) of a new run; refuse to resume one whose copies came out
    different (another device or thread count heals them to other weights, and recorded scores are of the old ones)."""
    copies = {e.name: s for e, s in zip(envs, sources, strict=True) if "pre_pruned" in s}
    path = run_dir / "copies.json"
    if resume and path.is_file():
        before = read_json(path, "pre-pruned copies record")
        for name, source in copies.items():
            if before.get(name, {}).get("weights_sha256") != source["weights_sha256"]:
                raise RLPruneError(
                    f"{run_dir}: pre_pruned copy {name} came out different from the one this run started with "
                    "(another device or thread count?); resume it where it started, or start a new run",
                    fix="rename",
                )
    for name, source in copies.items():
        log.info("%s: a copy of %s at %.2f of its MACs", name, source["checkpoint"], source["macs_ratio"])
    if copies:
        atomic_write_text(path, json.dumps(copies, indent=1) + "\n")


def _model_stats(records: list[dict[str, Any]], name: str, last: int = 50) -> dict[str, Any]:
    """Episodes of one model and the mean reward of its first and last ``last`` (does the policy improve on it?)."""
    rewards = [r["reward"] for r in records if r.get("model") == name]
    if not rewards:
        return {"episodes": 0}
    return {
        "episodes": len(rewards),
        "mean_reward_first": round(float(np.mean(rewards[:last])), 5),
        "mean_reward_last": round(float(np.mean(rewards[-last:])), 5),
    }


def _refs(env: LayerPruningEnv) -> dict[str, Any]:
    return {"references": env.references.measured()}


__all__ = ["model_envs", "pre_pruned_model", "scorer_envs", "search_models"]
