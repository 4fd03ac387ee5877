"""``rlprune run`` in iterative rounds (``rounds:`` in the config): per round, search a plan (or apply a policy) for
the model the previous round left, prune it to the round's MACs target, fine-tune; resumable per round.

Pruning a lot at once removes channels the network still relies on; removing them in steps with fine-tuning in
between lets the rest take over (Zhu & Gupta, 2017). Each round's target is a ratio of the *original* dense model's
MACs, so the round's search, which sees the current (already pruned) model, aims at ``target · dense MACs / current
MACs`` — with its tolerance scaled the same way, so the round lands within ``env.tolerance`` of the dense-relative
target. Every round's fine-tune distills from, and is reported against, the original dense model.

``runs/<name>/`` holds ``rounds.json`` (the schedule and each finished round's numbers), ``rounds.md`` and one
folder per round, ``round_<k>/``: that round's search run directory (or ``plan.json`` when a policy is applied) and
``round_<k>/pruned/``, its fine-tuned model, ONNX and report. The last round's ``pruned/`` is the result. A round
is recorded as finished only once its fine-tune is published, so a killed run resumes at its first unfinished round
(whose search and fine-tune resume from their own records).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from rlprune.agents.policy_io import load_policy
from rlprune.config import SearchConfig, validate
from rlprune.data import splits_from_meta
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_checkpoint, read_meta
from rlprune.io.files import atomic_write_text
from rlprune.io.reports import FinetuneReport, JobResult, RoundRecord, SearchSummary
from rlprune.jobs.apply import example_input, load_dense, policy_plans
from rlprune.jobs.finetune import finetune_plan
from rlprune.pruning import Plan, Structure, analyze
from rlprune.pruning.options import PruneOptions
from rlprune.pruning.rounds import STATE, finished_rounds, record_rounds
from rlprune.reporting.tables import md_table
from rlprune.searching.api import run_search
from rlprune.searching.identity import RESUMABLE_AGENT_KEYS

log = logging.getLogger("rlprune.rounds")


def round_config(
    cfg: SearchConfig, k: int, checkpoint: Path, target: float, dense_macs: int, macs: int
) -> SearchConfig:
    """The search config of round ``k`` (1-based): ``cfg`` on ``checkpoint`` (the model the previous round left,
    ``macs`` of the dense model's ``dense_macs``) at the round's ``target`` given relative to the dense model."""
    relative = target * dense_macs / macs
    if relative >= 1.0:
        raise RLPruneError(
            f"rounds: round {k} targets {target:g} of the dense MACs, but the model it starts from is already at "
            f"{macs / dense_macs:.4f}; targets must decrease"
        )
    data = cfg.model_dump(mode="json")
    data.update(name=f"round_{k}", output_dir=str(Path(cfg.output_dir) / cfg.name), checkpoint=str(checkpoint))
    data.update(rounds=None)
    tolerance = min(0.49, cfg.env.tolerance * dense_macs / macs)
    data["env"] = {**data["env"], "target": relative, "tolerance": tolerance}
    assert cfg.rounds is not None
    data["agent"] = {**data["agent"], "episodes": cfg.rounds.episodes or cfg.agent.episodes}
    return validate(SearchConfig, data, f"rounds: round {k}")


def run_rounds(
    cfg: SearchConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    trust_model_code: bool = False,
    force: bool = False,
) -> JobResult:
    """The main job in rounds (``cfg.rounds``); returns what :func:`rlprune.jobs.pipeline.run_job` returns, with
    ``rounds``: each round's target, MACs ratio, accuracies and latency ratios against the dense model."""
    rounds = cfg.rounds
    if rounds is None or cfg.checkpoint is None:
        raise RLPruneError("rounds: the job needs a 'rounds' section and the dense model's checkpoint")
    run_dir = Path(cfg.output_dir) / cfg.name
    state = run_dir / STATE
    if not resume and (state.is_file() or (run_dir / "round_1").exists()):
        raise RLPruneError(f"{run_dir}: a run in rounds already ran here", fix="resume_or_rename")
    targets = rounds.schedule(float(cfg.env.target))
    # what the finished rounds were made from: a resume on other dense weights (or settings) would mix two runs
    decided = cfg.model_dump(mode="json", include={"env", "proxy", "prune", "agent", "finetune", "seed"})
    for key in RESUMABLE_AGENT_KEYS:  # as for a search's resume
        decided["agent"].pop(key, None)
    decided["finetune_epochs"] = rounds.finetune_epochs
    schedule = {
        "targets": targets,
        "policy": rounds.policy,
        "dense_weights_sha256": read_meta(cfg.checkpoint).get("weights_sha256"),
        "settings": decided,
    }
    done = [RoundRecord.parse(r, f"{state}: round {i + 1}") for i, r in enumerate(finished_rounds(state, schedule))]
    options = PruneOptions.of(cfg.prune.ignore, cfg.prune.heads)  # every round leaves the same parts alone
    dense, meta, structure = load_dense(cfg.checkpoint, trust_model_code=trust_model_code, options=options)
    splits = splits_from_meta(meta, cfg.data_root)
    policy = load_policy(rounds.policy) if rounds.policy else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if done:
        log.info("rounds: %d of %d already finished; resuming at round %d", len(done), len(targets), len(done) + 1)
    for index in range(len(done), len(targets)):
        k = index + 1
        current = run_dir / done[-1].checkpoint if done else Path(cfg.checkpoint)
        model, model_meta = load_checkpoint(current, trust_model_code=trust_model_code) if done else (dense, meta)
        current_structure = analyze(model.eval(), example_input(meta), ignore=options.ignore, heads=options.heads)
        round_cfg = round_config(cfg, k, current, targets[index], structure.total_macs, current_structure.total_macs)
        round_dir = run_dir / round_cfg.name
        log.info("round %d of %d: MACs target %.4f of the dense model", k, len(targets), targets[index])
        plan, proxy = _round_plan(round_cfg, model, current_structure, policy, progress, trust_model_code, force)
        report = finetune_plan(
            model,
            model_meta,
            plan,
            splits,
            round_dir / "pruned",
            cfg.finetune.model_copy(
                update={
                    "epochs": rounds.finetune_epochs or cfg.finetune.epochs,
                    "quantize": cfg.finetune.quantize if k == len(targets) else None,  # only the result is deployed
                }
            ),
            seed=cfg.seed,
            progress=progress,
            source={"search": str(round_dir), "checkpoint": str(current), "round": k, "dense": cfg.checkpoint},
            reuse=True,
            device=cfg.device,
            reference=dense,
        )
        done.append(_record(k, targets[index], round_dir, report, proxy))
        record_rounds(state, schedule, [r.to_dict() for r in done])  # only now is the round finished
    atomic_write_text(run_dir / "rounds.md", rounds_markdown(done) + "\n")
    last = run_dir / done[-1].checkpoint
    report_md = (last.parent / "report.md").read_text()
    return JobResult(
        best_val_proxy_accuracy=done[-1].proxy_val_accuracy,
        macs_ratio=done[-1].macs_ratio,
        report=str(last.parent / "report.md"),
        pruned_model=str(last),
        rounds=done,
        tensorboard=f"tensorboard --logdir {run_dir}",
        report_md=report_md + "\n" + rounds_markdown(done) + "\n",
    )


def _round_plan(
    cfg: SearchConfig,
    model: nn.Module,
    structure: Structure,
    policy: Any,
    progress: bool,
    trust_model_code: bool,
    force: bool = False,
) -> tuple[Plan, float | None]:
    """The round's plan and its proxy accuracy: the policy's deterministic rollout, or the best plan of the round's
    search (run, resumed, or reused when its summary already has every episode)."""
    round_dir = Path(cfg.output_dir) / cfg.name
    if policy is not None:
        target = float(cfg.env.target)  # type: ignore[arg-type]
        plan = policy_plans(policy, model, structure, target=target, importance=cfg.proxy.importance, force=force)[0]
        round_dir.mkdir(parents=True, exist_ok=True)
        plan.save(round_dir / "plan.json")
        return plan, None
    summary_path = round_dir / "summary.json"
    summary = None
    if summary_path.is_file():
        try:
            summary = SearchSummary.load(summary_path, "round search summary")
        except RLPruneError as exc:  # another format, or edited: the round's search runs (or resumes) again
            log.warning("%s", exc)
    if summary is None or summary.episodes < cfg.agent.episodes:
        resume = (round_dir / "episodes.jsonl").is_file()
        found = run_search(cfg, resume=resume, progress=progress, trust_model_code=trust_model_code)
        if not isinstance(found, SearchSummary):
            raise RLPruneError("rounds: a round searches one model")
        summary = found
    accuracy = summary.best.accuracy
    return Plan.load(round_dir / "best_plan.json"), None if accuracy is None else round(accuracy, 2)


def _record(k: int, target: float, round_dir: Path, report: FinetuneReport, proxy: float | None) -> RoundRecord:
    """What rounds.json keeps of a finished round (paths relative to the run directory, so it can move)."""
    after = report.pruned.after_finetune
    return RoundRecord(
        round=k,
        target=target,
        checkpoint=f"{round_dir.name}/pruned/model.json",
        proxy_val_accuracy=proxy,
        macs_ratio=round(report.pruned.macs_ratio, 5),
        params_ratio=round(report.params_ratio, 5),
        val_accuracy=round(after.val, 2),
        test_accuracy=round(after.test, 2),
        latency_ratio_cpu={bs: round(report.latency_ratio(bs), 4) for bs in report.latency_batches()},
    )


def rounds_markdown(done: list[RoundRecord]) -> str:
    """A table of the finished rounds, each against the original dense model."""
    batches = sorted(done[0].latency_ratio_cpu, key=int) if done else []
    rows = [
        [
            str(r.round),
            f"{r.target:.4f}",
            f"{r.macs_ratio:.4f}",
            f"{r.params_ratio:.4f}",
            *(f"{r.latency_ratio_cpu[bs]:.3f}" for bs in batches),
            f"{r.val_accuracy:.2f}",
            f"{r.test_accuracy:.2f}",
        ]
        for r in done
    ]
    head = ["round", "MACs target", "MACs", "params", *(f"CPU latency b{bs}" for bs in batches), "val %", "test %"]
    return "## Rounds (ratios against the dense model, after each round's fine-tune)\n\n" + md_table(head, rows)


__all__ = ["round_config", "rounds_markdown", "run_rounds"]
