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

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from rlprune.config import EnvConfig, PrePrunedConfig, SearchConfig, model_label
from rlprune.data import BatchLoader
from rlprune.envs.features import FEATURE_VERSION
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.envs.multi import MultiModelEnv
from rlprune.errors import RLPruneError
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.evaluation.proxy import ProxyEvaluator, scorer_settings
from rlprune.io.provenance import tensors_sha256
from rlprune.io.reports import ModelSummary, MultiSearchSummary
from rlprune.io.rundir import RunDir
from rlprune.pruning import Plan, prune
from rlprune.searching.agent import train_agent
from rlprune.searching.recorder import SearchRecorder
from rlprune.searching.run import SearchRun, remember_records, run_stats
from rlprune.searching.setup import build_budget, build_scorer
from rlprune.seeding import HEALING_STREAM, one_thread, stream_seed
from rlprune.training.loop import finetune

log = logging.getLogger("rlprune.searching.multi")


def model_envs(
    cfg: SearchConfig, trust_model_code: bool, features: int = FEATURE_VERSION
) -> tuple[list[LayerPruningEnv], list[dict[str, Any]]]:
    """One environment per checkpoint of ``cfg.checkpoints`` (and per pre-pruned copy of each, ``cfg.pre_pruned``),
    each with its own proxy scorer (data and model built once per model) and budget over ``cfg.env``'s target range;
    the episode recorder is attached afterwards. Returns the environments and, for each, where its model came from
    (its checkpoint; for a copy also its number, MACs ratio and the ratios it was cut by)."""
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
        loader = scorer.training_loader(pp.heal_batch_size, stream_seed(seed, HEALING_STREAM), channels_last=False)
        steps = _Steps(loader, pp.heal_steps)
        with one_thread():  # the same copy whatever the thread count (gradient sums split by thread)
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


class MultiModelSearch(SearchRun):
    """One RL policy trained over several models: every checkpoint in ``cfg.checkpoints`` (and its pre-pruned
    copies), or every named scorer of ``scorers``; each episode draws a model and a target.

    :param trust_model_code: import model code the checkpoints name (see :mod:`rlprune.io.trust`).
    :param scorers: named scorers (your own models and metrics) instead of ``cfg.checkpoints``.
    """

    def __init__(
        self,
        cfg: SearchConfig,
        *,
        resume: bool = False,
        progress: bool = True,
        trust_model_code: bool = False,
        scorers: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(cfg, resume=resume, progress=progress)
        self.trust_model_code, self.scorers = trust_model_code, scorers

    def build(self) -> None:
        # every checkpoint loads and analyzes (and every copy is cut) before the run dir exists
        if self.scorers is not None:
            self.envs, self.sources = scorer_envs(self.cfg, self.scorers, self.features)
        else:
            self.envs, self.sources = model_envs(self.cfg, self.trust_model_code, self.features)

    def opened(self) -> None:
        _same_copies(self.run_dir, self.envs, self.sources, self.resume)

    def recorder(self) -> SearchRecorder:
        recorder = SearchRecorder(self.run_dir, None, structure=None, budget=self.cfg.env.budget)
        for env in self.envs:
            env.on_episode = recorder
            remember_records(env.scorer, [r for r in recorder.records if r.get("model") == env.name])
        return recorder

    def search(self, recorder: SearchRecorder) -> SummaryWriter:
        cfg, envs = self.cfg, self.envs
        # copies are drawn by pre_pruned.weight
        multi = MultiModelEnv(envs, weights=[source.get("weight", 1.0) for source in self.sources])
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
        self.models = [
            {"name": e.name, **source, "fingerprint": e.structure.fingerprint, "units": len(e.units)}
            for e, source in zip(envs, self.sources, strict=True)
        ]
        extra = {"models": self.models}
        return train_agent(
            cfg, multi, recorder, self.run_dir, self.resume, self.progress, extra_meta=extra, start=self.start
        )

    def summarize(self, recorder: SearchRecorder, writer: SummaryWriter, started: float) -> MultiSearchSummary:
        models = zip(self.models, self.envs, strict=True)
        log.info("policy over %d models -> %s", len(self.envs), self.run_dir / "policy.json")
        return MultiSearchSummary(
            name=self.cfg.name,
            searcher=self.cfg.agent.algorithm,
            episodes=recorder.episodes,
            reward=self.cfg.env.reward,
            target=self.cfg.env.target,
            models=[
                ModelSummary(**m, **_model_stats(recorder.records, m["name"]), references=e.references.measured())
                for m, e in models
            ],
            **run_stats(recorder, started),
        )


def search_models(
    cfg: SearchConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    trust_model_code: bool = False,
    scorers: Mapping[str, Any] | None = None,
) -> MultiSearchSummary:
    """Run a :class:`MultiModelSearch`; returns the summary (also written to ``summary.json``). Called by
    :func:`rlprune.searching.api.run_search`, which holds the run directory's lock."""
    summary = MultiModelSearch(
        cfg, resume=resume, progress=progress, trust_model_code=trust_model_code, scorers=scorers
    ).run()
    assert isinstance(summary, MultiSearchSummary)
    return summary


def _same_copies(run_dir: Path, envs: list[LayerPruningEnv], sources: list[dict[str, Any]], resume: bool) -> None:
    """Record the pre-pruned copies (``copies.json``) of a new run; refuse to resume one whose copies came out
    different (another device heals them to other weights, and recorded scores are of the old ones)."""
    copies = {e.name: s for e, s in zip(envs, sources, strict=True) if "pre_pruned" in s}
    run = RunDir(run_dir)
    before = run.read_json("copies.json", "pre-pruned copies record") if resume else None
    if isinstance(before, dict):
        for name, source in copies.items():
            if before.get(name, {}).get("weights_sha256") != source["weights_sha256"]:
                raise RLPruneError(
                    f"{run_dir}: pre_pruned copy {name} came out different from the one this run started with "
                    "(another device?); resume it where it started, or start a new run",
                    fix="rename",
                )
    for name, source in copies.items():
        log.info("%s: a copy of %s at %.2f of its MACs", name, source["checkpoint"], source["macs_ratio"])
    if copies:
        run.write_json("copies.json", copies)


def _model_stats(records: list[dict[str, Any]], name: str, last: int = 50) -> dict[str, float]:
    """Episodes of one model and the mean reward of its first and last ``last`` (does the policy improve on it?)."""
    rewards = [r["reward"] for r in records if r.get("model") == name]
    if not rewards:
        return {"episodes": 0}
    return {
        "episodes": len(rewards),
        "mean_reward_first": round(float(np.mean(rewards[:last])), 5),
        "mean_reward_last": round(float(np.mean(rewards[-last:])), 5),
    }


__all__ = ["MultiModelSearch", "model_envs", "pre_pruned_model", "scorer_envs", "search_models"]
