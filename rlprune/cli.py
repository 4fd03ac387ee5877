"""Command-line entry point: ``rlprune <command> ...``.

Every user error ends in one line on stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence

from rlprune.errors import RLPruneError


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlprune.config import PretrainConfig, load_config
    from rlprune.pretrain import publish, run_pretrain

    cfg = load_config(args.config, PretrainConfig, args.set)
    final = run_pretrain(cfg, resume=not args.restart, progress=not args.quiet)
    out = {"val_accuracy": final["val_accuracy"], "test_accuracy": final["test_accuracy"]}
    if args.out:
        out["published"] = str(publish(Path(cfg.output_dir) / cfg.name, args.out))
    print(json.dumps(out))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from rlprune.checkpoint import load_checkpoint
    from rlprune.data import splits_from_meta
    from rlprune.evaluation import evaluate
    from rlprune.seeding import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint)
    splits = splits_from_meta(meta, args.data_root)
    if splits.classes != meta.get("classes", splits.classes):
        raise RLPruneError(f"{args.checkpoint}: checkpoint classes differ from the dataset's classes")
    device = resolve_device(args.device)
    data = {"train": splits.train, "val": splits.val, "test": splits.test}[args.split]
    # Inputs are normalized with the statistics the model was trained with, not recomputed ones.
    mean, std = meta.get("mean", splits.mean), meta.get("std", splits.std)
    metrics = evaluate(model.to(device), data, mean, std, batch_size=args.batch_size, device=device)
    out = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "accuracy": round(metrics["accuracy"], 2),
        "loss": round(metrics["loss"], 4),
        "images": metrics["images"],
    }
    recorded = meta.get(f"{args.split}_accuracy")
    if recorded is not None:
        out["recorded_accuracy"] = recorded
    print(json.dumps(out))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rlprune.config import SearchConfig, load_config
    from rlprune.search import run_search

    cfg = load_config(args.config, SearchConfig, args.set)
    summary = run_search(cfg, resume=args.resume, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlprune.apply import finetune_plan, load_dense
    from rlprune.config import SearchConfig, load_config
    from rlprune.data import splits_from_meta
    from rlprune.pruning import Plan
    from rlprune.search import run_search

    cfg = load_config(args.config, SearchConfig, args.set)
    run_dir = Path(cfg.output_dir) / cfg.name
    out = run_dir / "pruned"
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise RLPruneError(f"{out}: already exists; use another name or --resume")
    summary = run_search(cfg, resume=args.resume, progress=not args.quiet)
    dense, meta, _ = load_dense(cfg.checkpoint)
    plan = Plan.load(run_dir / "best_plan.json")
    f = cfg.finetune
    finetune_plan(
        dense,
        meta,
        plan,
        splits_from_meta(meta, cfg.data_root),
        out,
        epochs=f.epochs,
        lr=f.lr,
        distill=f.distill,
        batch_size=f.batch_size,
        swa_epochs=f.swa_epochs,
        swa_lr=f.swa_lr,
        steps_per_epoch=f.steps_per_epoch,
        seed=cfg.seed,
        progress=not args.quiet,
        source={"search": str(run_dir), "checkpoint": cfg.checkpoint},
        reuse=True,
        device=cfg.device,
    )
    print(
        json.dumps(
            {
                "best_val_proxy_accuracy": round(summary["best"]["accuracy"], 2),
                "macs_ratio": round(summary["best"]["macs_ratio"], 4),
                "report": str(out / "report.md"),
                "pruned_model": str(out / "model.json"),
                "tensorboard": f"tensorboard --logdir {run_dir}",
            }
        )
    )
    print((out / "report.md").read_text())
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from rlprune.agents.searchers import SEARCHERS
    from rlprune.config import SearchConfig, load_config
    from rlprune.search import run_search

    if args.searcher not in SEARCHERS:
        raise RLPruneError(f"--searcher '{args.searcher}': expected one of {', '.join(sorted(SEARCHERS))}")
    cfg = load_config(args.config, SearchConfig, args.set)
    if not any(o.startswith("name=") for o in args.set):
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-{args.searcher}"})
    summary = run_search(cfg, searcher=args.searcher, resume=args.resume, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _finetune_common(args: argparse.Namespace, plan_fn: object) -> int:
    from pathlib import Path

    import torch

    from rlprune.apply import finetune_plan, load_dense
    from rlprune.data import splits_from_meta

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.finetune_epochs < 1:
        raise RLPruneError(f"--finetune-epochs: expected >= 1, got {args.finetune_epochs}")
    if not 0 <= args.swa_epochs <= args.finetune_epochs:
        raise RLPruneError(
            f"--swa-epochs: expected 0 to {args.finetune_epochs} (--finetune-epochs), got {args.swa_epochs}"
        )
    if args.swa_lr is not None and not 0 < args.swa_lr <= args.lr:
        raise RLPruneError(f"--swa-lr: expected a value in (0, --lr = {args.lr}], got {args.swa_lr}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise RLPruneError(f"--out {out}: exists and is not empty")
    dense, meta, structure = load_dense(args.checkpoint, args.model)
    # Data is loaded once, and only after a plan_fn that does not need it has had its chance to reject bad input.
    get_splits = functools.cache(lambda: splits_from_meta(meta, args.data_root))
    plan, source = plan_fn(dense, meta, structure, get_splits)  # type: ignore[operator]
    splits = get_splits()
    report = finetune_plan(
        dense,
        meta,
        plan,
        splits,
        out,
        epochs=args.finetune_epochs,
        lr=args.lr,
        swa_epochs=args.swa_epochs,
        swa_lr=args.swa_lr,
        distill=not args.no_distill,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
        source=source,
        device=args.device,
    )
    after = report["pruned"]["after_finetune"]
    print(
        json.dumps(
            {
                "out": str(out),
                "macs_ratio": round(report["pruned"]["macs_ratio"], 4),
                "dense_test_accuracy": round(report["dense"]["test"], 2),
                "test_accuracy": round(after["test"], 2),
                "report": str(out / "report.md"),
                "tensorboard": f"tensorboard --logdir {out / 'finetune'}",
            }
        )
    )
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from rlprune.apply import rollout_plan, sampled_policy_plan

    if (args.target_macs is None) == (args.target_latency is None):
        raise RLPruneError("give exactly one of --target-macs or --target-latency")
    budget = "macs" if args.target_macs is not None else "latency"
    target = args.target_macs if args.target_macs is not None else args.target_latency
    if not 0 < target <= 1:
        raise RLPruneError(f"--target-{budget}: expected a ratio in (0, 1], got {target}")
    if args.samples < 0:
        raise RLPruneError(f"--samples: expected >= 0, got {args.samples}")

    def plan_fn(dense, meta, structure, get_splits):
        source = {"policy": args.policy, "checkpoint": args.checkpoint, "target": target, "budget": budget}
        if not args.samples:
            plan = rollout_plan(args.policy, dense, structure, target=target, budget=budget, threads=args.threads)
            return plan, source
        plan, picked = sampled_policy_plan(
            args.policy,
            dense,
            structure,
            get_splits(),
            target=target,
            samples=args.samples,
            seed=args.seed,
            budget=budget,
            threads=args.threads,
            device=args.device,
        )
        return plan, source | picked

    return _finetune_common(args, plan_fn)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from rlprune.pruning import Plan

    def plan_fn(dense, meta, structure, get_splits):
        plan = Plan.load(args.plan, structure)  # a saved plan or a hand-written {"ratios": ...}
        plan.check(structure, args.plan)
        return plan, {"plan": args.plan, "checkpoint": args.checkpoint}

    return _finetune_common(args, plan_fn)


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="dense checkpoint (<name>.json)")
    p.add_argument("--model", default=None, help="zoo name or package.module:factory (default: from the checkpoint)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--swa-epochs", type=int, default=0, help="average the last N fine-tune epochs (SWA); 0 = off")
    p.add_argument("--swa-lr", type=float, default=None, help="the lr held during SWA (default: half of --lr)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-distill", action="store_true", help="fine-tune on labels only (default: distill from dense)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (CUDA when present)")
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlprune", description="Learn per-layer pruning ratios with RL.")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_command(name: str, help_: str, func: object, resume_help: str | None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help="experiment YAML (see experiments/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        if resume_help:
            p.add_argument("--resume", action="store_true", help=resume_help)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    p = config_command("pretrain", "train a dense model from a YAML config", _cmd_pretrain, None)
    p.add_argument("--restart", action="store_true", help="ignore a saved state and start from epoch 0")
    p.add_argument(
        "--out",
        default=None,
        metavar="PREFIX",
        help="also copy the finished checkpoint, config, log and history to PREFIX.* (e.g. zoo/resnet20_cifar10)",
    )
    config_command(
        "train",
        "learn a pruning policy with an RL agent (PPO by default)",
        _cmd_train,
        "continue the run in runs/<name>/",
    )
    config_command(
        "run",
        "the main job: search, fine-tune the best plan, export and report",
        _cmd_run,
        "continue an interrupted run",
    )
    p = config_command(
        "search",
        "baseline search (uniform, random, evolution) with the same budget",
        _cmd_search,
        "continue the run in runs/<name>-<searcher>/",
    )
    p.add_argument("--searcher", required=True, help="uniform | random | evolution")

    p = sub.add_parser("apply", help="roll a learned policy out on a model, prune, fine-tune, export, report")
    p.add_argument("--policy", required=True, help="run directory or policy.json of a search")
    p.add_argument("--target-macs", type=float, default=None, help="pruned/dense MACs ratio")
    p.add_argument("--target-latency", type=float, default=None, help="pruned/dense batch-1 CPU latency ratio")
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        help="also draw N plans from the policy's distribution (seeded by --seed) and keep the one the search's "
        "proxy scores best on the validation split (a few seconds per plan); 0 = the deterministic rollout",
    )
    _add_finetune_args(p)
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("finetune", help="prune with a saved plan, fine-tune, export, report")
    p.add_argument("--plan", required=True, help="plan JSON (e.g. a search's best_plan.json)")
    _add_finetune_args(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="accuracy of a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="path to <name>.json / <name>.safetensors (or <name>)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--data-root", default=None, help="dataset file or folder (default: the usual locations)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RLPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
