"""``rlprune apply`` and ``rlprune finetune``: turn a policy or a plan into a deployable pruned model.

Pipeline: roll the policy out on the new model's units (deterministic, no search) -> prune for real -> recalibrate
batch norm -> fine-tune (distilling from the dense model by default) -> evaluate on validation and test -> save
safetensors + plan, ONNX (checked against onnxruntime), ``report.json`` / ``report.md`` and a per-layer ratio plot.
Everything is written into a temporary folder that is renamed into place at the end: a failed run leaves nothing
half-written.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.agents.policy_io import load_policy
from rlprune.agents.recorder import ratio_plot_png
from rlprune.checkpoint import load_checkpoint, save_checkpoint
from rlprune.config import ProxyConfig, TrainConfig, atomic_write_text, validate
from rlprune.cost.latency import compare_latency
from rlprune.cost.lut import build_latency_table
from rlprune.cost.macs import count_macs, count_params
from rlprune.data import BatchLoader, DataSplits
from rlprune.envs.calibration import calibrate_latency_budget
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.evaluation import evaluate
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.evaluation.proxy import ProxyEvaluator
from rlprune.export import export_onnx
from rlprune.pruning import Plan, Structure, analyze, prune
from rlprune.pruning.importance import calibration_batches
from rlprune.results import environment, md_table
from rlprune.seeding import resolve_device
from rlprune.training.engine import fit

log = logging.getLogger("rlprune.apply")


class _StructureOnly:
    """A scorer stand-in for rolling a policy out: it carries the structure; applying a policy scores nothing."""

    importance = "l1"

    def __init__(self, structure: Structure, importance: str) -> None:
        self.structure = structure
        self.importance = importance

    def __call__(self, plan: Plan) -> Any:  # pragma: no cover - rollout never finishes through step()
        raise RuntimeError("a policy rollout does not evaluate plans")


def example_input(meta: dict[str, Any]) -> torch.Tensor:
    side = int(meta.get("input_size", 32))
    return torch.zeros(1, int(meta.get("in_channels", 3)), side, side)


def load_dense(checkpoint: str, model_name: str | None = None) -> tuple[nn.Module, dict[str, Any], Structure]:
    """A dense checkpoint, its metadata and its prunable structure (a checkpoint without units is refused)."""
    model, meta = load_checkpoint(checkpoint, model_name)
    if meta.get("plan"):
        raise RLPruneError(f"{checkpoint}: already pruned; apply a policy to a dense checkpoint")
    structure = analyze(model.eval(), example_input(meta))
    return model, meta, structure


def rollout_plan(
    policy_path: str,
    model: nn.Module,
    structure: Structure,
    *,
    target: float,
    budget: str = "macs",
    latency_batch: int = 1,
    threads: int | None = None,
    importance: str | None = None,
) -> Plan:
    """Roll a saved policy out deterministically on ``model``'s units, clamped to the budget like in training.

    :param importance: channel criterion recorded in the plan (default: the one the policy was trained with).
    """
    return policy_plans(
        policy_path,
        model,
        structure,
        target=target,
        samples=0,
        budget=budget,
        latency_batch=latency_batch,
        threads=threads,
        importance=importance,
    )[0]


def policy_plans(
    policy_path: str,
    model: nn.Module,
    structure: Structure,
    *,
    target: float,
    samples: int,
    seed: int = 0,
    budget: str = "macs",
    latency_batch: int = 1,
    threads: int | None = None,
    importance: str | None = None,
) -> list[Plan]:
    """The deterministic rollout followed by ``samples`` rollouts drawn from the policy's action distribution.

    A policy learned on one network is a prior on another, not an answer: on a deeper model its mean can spend the
    whole budget early (benchmarks/results/transfer.md). Sampled plans stay close to what it learned and give a
    proxy something to choose from, at a few seconds per plan instead of a search.
    """
    policy = load_policy(policy_path)
    m = policy.meta
    importance = importance or m.get("importance", "l1")
    trained = m.get("target")
    lo, hi = (trained, trained) if isinstance(trained, int | float) else tuple(trained or (target, target))
    if not lo - 0.1 <= target <= hi + 0.1:
        log.warning(
            "target %.3f is outside the range the policy was trained on (%s); results may be poor", target, trained
        )
    if m.get("budget", "macs") != budget:
        log.warning("the policy was trained with a %s budget; applying it with a %s budget", m.get("budget"), budget)
    table = build_latency_table(model, structure, latency_batch, threads=threads) if budget == "latency" else None
    env = LayerPruningEnv(
        _StructureOnly(structure, importance),
        target=target,
        budget=budget,
        min_ratio=m.get("min_ratio", 0.0),
        max_ratio=m.get("max_ratio", 0.8),
        round_to=m.get("round_to"),
        min_channels=m.get("min_channels", 1),
        latency_table=table,
    )
    calibrate_latency_budget(env, model, seed=0, threads=threads)  # a latency target is met as measured, on average
    plans = [env.rollout(policy.act, target)]
    if samples:
        sample = policy.sampler(seed)
        plans += [env.rollout(sample, target) for _ in range(samples)]
    return plans


def pick_by_proxy(plans: list[Plan], proxy: ProxyEvaluator) -> tuple[int, list[dict[str, float]]]:
    """Score every plan with the search's proxy (validation split only); returns the best index and all scores."""
    scores = []
    for plan in plans:
        r = proxy(plan)
        scores.append({"proxy_val_accuracy": round(r.accuracy, 2), "macs_ratio": round(r.macs_ratio, 4)})
    best = max(range(len(plans)), key=lambda i: scores[i]["proxy_val_accuracy"])
    return best, scores


def sampled_policy_plan(
    policy_path: str,
    model: nn.Module,
    structure: Structure,
    splits: DataSplits,
    *,
    target: float,
    samples: int,
    seed: int = 0,
    budget: str = "macs",
    threads: int | None = None,
    device: str = "cpu",
) -> tuple[Plan, dict[str, Any]]:
    """The best of the deterministic rollout and ``samples`` drawn plans, scored by the search's default proxy
    (:class:`~rlprune.config.ProxyConfig`) on ``splits.val``; returns it with a record of every candidate's score.
    """
    plans = policy_plans(
        policy_path, model, structure, target=target, samples=samples, seed=seed, budget=budget, threads=threads
    )
    cfg = ProxyConfig(importance=plans[0].importance)
    best, scores = pick_by_proxy(
        plans, ProxyEvaluator(model, splits, **cfg.model_dump(), device=resolve_device(device))
    )
    return plans[best], {"samples": samples, "candidates": scores, "chosen": "deterministic" if best == 0 else best}


def finetune_plan(
    dense: nn.Module,
    meta: dict[str, Any],
    plan: Plan,
    splits: DataSplits,
    out_dir: Path,
    *,
    epochs: int = 1,
    lr: float = 0.02,
    distill: bool = True,
    batch_size: int = 128,
    recal_batches: int = 50,
    seed: int = 0,
    latency_batches: tuple[int, ...] = (1, 64),
    progress: bool = True,
    source: dict[str, Any] | None = None,
    reuse: bool = False,
    device: str = "cpu",
    swa_epochs: int = 0,
    swa_lr: float | None = None,
) -> dict[str, Any]:
    """Prune ``dense`` with ``plan``, fine-tune, evaluate, export and report into ``out_dir``; returns the report.

    Work happens in ``.<out_dir name>.partial`` beside ``out_dir`` and is renamed into place when complete, so
    ``out_dir`` is never half-written. A fine-tune that was killed resumes from its last finished epoch when the same
    command is run again (the partial folder keeps its per-epoch state; a failure before any epoch removes it).

    :param reuse: if ``out_dir`` already holds a finished report, return it instead of fine-tuning again.
    :param swa_epochs: average the weights of the last N epochs (SWA; the lr decays to ``swa_lr`` by their start and
        holds there; default ``swa_lr``: half of ``lr``); 0 = off.
    :param device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present) for the fine-tune and evaluation;
        CPU latency is always measured on CPU.
    """
    if reuse and (out_dir / "report.json").is_file():
        return json.loads((out_dir / "report.json").read_text())
    swa = {"epochs": swa_epochs, "lr": swa_lr if swa_lr is not None else lr / 2} if swa_epochs else None
    recipe = validate(  # TrainConfig's own checks (SWA inside the epochs, its lr at most lr) before any work
        TrainConfig,
        {
            "epochs": epochs,
            "lr": lr,
            "warmup_epochs": 0,
            "weight_decay": 5e-4,
            "distill": {"weight": 0.5 if distill else 0.0, "temperature": 4.0},
            "swa": swa or {},
        },
        "fine-tune",
    )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RLPruneError(f"{out_dir}: output directory exists and is not empty")
    example = example_input(meta)
    structure = analyze(dense.eval(), example)
    plan.check(structure, "plan")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.partial"
    request = json.dumps(
        {
            "plan": plan.key(),
            "dense": meta.get("weights_sha256"),
            "epochs": epochs,
            "lr": lr,
            "distill": distill,
            "batch_size": batch_size,
            "recal_batches": recal_batches,
            "seed": seed,
            **({"swa": swa} if swa else {}),  # only when on: partial runs from before the option still resume
        },
        sort_keys=True,
    )
    resumable = (work / "finetune" / "state.pt").is_file()
    if resumable and _read_text(work / "request.json") != request:
        log.warning("%s: left by a fine-tune with other settings; starting over", work)
        resumable = False
    if work.exists() and not resumable:
        shutil.rmtree(work)  # nothing worth resuming
    if resumable:
        log.info("resuming the fine-tune in %s", work)
    work.mkdir(exist_ok=True)
    atomic_write_text(work / "request.json", request + "\n")
    try:
        report = _run(
            dense,
            meta,
            plan,
            structure,
            splits,
            work,
            recipe=recipe,
            distill=distill,
            batch_size=batch_size,
            recal_batches=recal_batches,
            seed=seed,
            latency_batches=latency_batches,
            progress=progress,
            source=source or {},
            device=resolve_device(device),
            swa=swa,
        )
        # complete: drop what only served resuming (the TensorBoard logs stay)
        for name in ("finetune/last.safetensors", "finetune/last.json", "finetune/state.pt", "request.json"):
            (work / name).unlink(missing_ok=True)
        if out_dir.exists():
            out_dir.rmdir()
        work.rename(out_dir)
        if report["onnx"].get("error"):
            raise RLPruneError(f"{out_dir}: fine-tuned model, plan and report written, but {report['onnx']['error']}")
    except BaseException as exc:
        if not (work / "finetune" / "state.pt").is_file():
            shutil.rmtree(work, ignore_errors=True)
        else:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed ({type(exc).__name__})"
            log.warning("fine-tune %s; the same command resumes from the last finished epoch in %s", why, work)
        raise
    return report


def _read_text(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _run(
    dense: nn.Module,
    meta: dict[str, Any],
    plan: Plan,
    structure: Structure,
    splits: DataSplits,
    work: Path,
    *,
    recipe: TrainConfig,
    distill: bool,
    batch_size: int,
    recal_batches: int,
    seed: int,
    latency_batches: tuple[int, ...],
    progress: bool,
    source: dict[str, Any],
    device: torch.device,
    swa: dict[str, float] | None = None,
) -> dict[str, Any]:
    mean, std = meta.get("mean", splits.mean), meta.get("std", splits.std)
    shape = tuple(example_input(meta).shape[1:])
    loader = BatchLoader(splits.train, batch_size, mean, std, shuffle=True, seed=seed + 1)
    calibration = calibration_batches(plan.importance, loader)  # e.g. taylor: scores from a few labelled batches
    pruned, plan = prune(dense, plan, example_input(meta), calibration=calibration)
    recalibrate_bn(pruned, (x for _, (x, _) in zip(range(recal_batches), loader, strict=False)))

    def scores(model: nn.Module) -> dict[str, float]:
        model.to(device)
        return {
            "val": evaluate(model, splits.val, mean, std, device=device)["accuracy"],
            "test": evaluate(model, splits.test, mean, std, device=device)["accuracy"],
        }

    dense_acc = scores(dense)
    before = scores(pruned)
    history = fit(
        pruned,
        splits,
        recipe,
        work / "finetune",
        meta={"model": meta["model"]},
        batch_size=batch_size,
        seed=seed,
        teacher=dense if distill else None,
        progress=progress,
        resume=True,
        device=device,
    ).history
    after = scores(pruned.eval())
    pruned, dense = pruned.cpu(), dense.cpu()

    plan.metrics = {"val_accuracy": after["val"], "test_accuracy": after["test"]}
    ckpt_meta = {k: v for k, v in meta.items() if k not in ("weights_file", "weights_sha256", "format")}
    ckpt_meta.update(
        plan=plan.to_dict(),
        val_accuracy=round(after["val"], 2),
        test_accuracy=round(after["test"], 2),
        recipe=recipe.model_dump(mode="json"),
        dense_checkpoint=source.get("checkpoint"),
    )
    save_checkpoint(work / "model", pruned, ckpt_meta)
    plan.save(work / "plan.json")
    rebuilt, _ = load_checkpoint(work / "model.json")
    x = torch.randn(4, *shape)
    with torch.no_grad():
        identical = torch.equal(rebuilt.eval()(x), pruned(x))
    if not identical:
        raise RLPruneError("rebuilt model differs from the pruned model; refusing to write an unfaithful checkpoint")
    try:
        onnx: dict[str, Any] = export_onnx(pruned, shape, work / "model.onnx")
    except RLPruneError as exc:  # the fine-tuned model must survive a model no exporter handles
        log.warning("%s", exc)
        onnx = {"error": str(exc)}
    lat = _str_keys(compare_latency({"dense": dense.eval(), "pruned": pruned}, shape, latency_batches, repeats=15))
    gpu = None
    if torch.cuda.is_available():
        gpu = compare_latency({"dense": dense.cuda(), "pruned": pruned.cuda()}, shape, latency_batches, repeats=30)
        gpu = _str_keys(gpu)
        dense.cpu()
        pruned.cpu()
    (work / "ratios.png").write_bytes(
        ratio_plot_png(list(plan.ratios.values()), f"{meta['model']}: per-unit pruning ratio")
    )
    report = {
        "model": meta["model"],
        "source": source,
        "plan_units": len(plan.ratios),
        "dense": {"params": count_params(dense), "macs": count_macs(dense.cpu(), shape), **dense_acc},
        "pruned": {
            "params": count_params(pruned),
            "macs": count_macs(pruned, shape),
            "before_finetune": before,
            "after_finetune": after,
        },
        "latency_ms_cpu": lat,
        "latency_ms_gpu": gpu,
        "onnx": onnx,
        "finetune": {"epochs": recipe.epochs, "lr": recipe.lr, "distill": distill, "swa": swa, "history": history},
        "environment": environment(),
    }
    report["pruned"]["macs_ratio"] = report["pruned"]["macs"] / report["dense"]["macs"]
    atomic_write_text(work / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    atomic_write_text(work / "report.md", _markdown(report))
    return report


def _str_keys(latency: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """Batch sizes as strings: the report reads the same whether it was just computed or loaded from JSON."""
    return {name: {str(bs): ms for bs, ms in by_batch.items()} for name, by_batch in latency.items()}


def _markdown(r: dict[str, Any]) -> str:
    d, p = r["dense"], r["pruned"]
    lat = r["latency_ms_cpu"]
    rows = [
        ["parameters", f"{d['params']:,}", f"{p['params']:,}", f"{p['params'] / d['params']:.3f}"],
        ["MACs", f"{d['macs']:,}", f"{p['macs']:,}", f"{p['macs_ratio']:.3f}"],
    ]
    for bs in sorted(lat["dense"], key=int):
        rows.append(
            [
                f"CPU latency, batch {bs} (ms)",
                f"{lat['dense'][bs]:.2f}",
                f"{lat['pruned'][bs]:.2f}",
                f"{lat['pruned'][bs] / lat['dense'][bs]:.3f}",
            ]
        )
    if r["latency_ms_gpu"]:
        g = r["latency_ms_gpu"]
        for bs in sorted(g["dense"], key=int):
            rows.append(
                [
                    f"GPU latency, batch {bs} (ms)",
                    f"{g['dense'][bs]:.3f}",
                    f"{g['pruned'][bs]:.3f}",
                    f"{g['pruned'][bs] / g['dense'][bs]:.3f}",
                ]
            )
    rows += [
        [
            "validation accuracy (%)",
            f"{d['val']:.2f}",
            f"{p['after_finetune']['val']:.2f}",
            f"{p['after_finetune']['val'] - d['val']:+.2f}",
        ],
        [
            "test accuracy (%)",
            f"{d['test']:.2f}",
            f"{p['after_finetune']['test']:.2f}",
            f"{p['after_finetune']['test'] - d['test']:+.2f}",
        ],
        ["validation accuracy before fine-tune (%)", "", f"{p['before_finetune']['val']:.2f}", ""],
        ["test accuracy before fine-tune (%)", "", f"{p['before_finetune']['test']:.2f}", ""],
    ]
    ft = r["finetune"]
    return "\n".join(
        [
            f"# Pruning report — {r['model']}",
            "",
            md_table(["", "dense", "pruned", "pruned / dense (or delta)"], rows),
            "",
            f"Fine-tune: {ft['epochs']} epoch(s), lr {ft['lr']}, distillation {'on' if ft['distill'] else 'off'}"
            + (f", the last {ft['swa']['epochs']} averaged (SWA, lr {ft['swa']['lr']:g})" if ft.get("swa") else "")
            + ". "
            + (
                f"ONNX export ({r['onnx'].get('exporter', 'legacy')}) checked against onnxruntime "
                f"(max |diff| {r['onnx']['max_abs_diff']:.1e}). "
                if "error" not in r["onnx"]
                else f"**Warning**: no ONNX model ({r['onnx']['error']}). "
            )
            + f"Source: {json.dumps(r['source'])}.",
            "",
            "![per-unit pruning ratios](ratios.png)",
            "",
        ]
    )
