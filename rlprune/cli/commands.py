"""What each ``rlprune`` sub-command does: read its arguments, call the Python API, print where the results went."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from rlprune.config.base import validate
from rlprune.config.experiment import FinetuneConfig
from rlprune.errors import RLPruneError

TRUST_HELP = "import model code (package.module:factory) named in the checkpoint; only for checkpoints you trust"


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlprune.config import PretrainConfig, load_config
    from rlprune.jobs.pretrain import publish, run_pretrain

    cfg = load_config(args.config, PretrainConfig, args.set)
    final = run_pretrain(cfg, resume=not args.restart, progress=not args.quiet, trust_model_code=args.trust_model_code)
    out = {"val_accuracy": final["val_accuracy"], "test_accuracy": final["test_accuracy"]}
    if args.out:
        out["published"] = str(publish(Path(cfg.output_dir) / cfg.name, args.out, model_name=cfg.model.name))
    print(json.dumps(out))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from rlprune.data import splits_from_meta
    from rlprune.evaluation import evaluate
    from rlprune.io.checkpoint import check_classes, load_checkpoint
    from rlprune.seeding import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint, trust_model_code=args.trust_model_code)
    splits = splits_from_meta(meta, args.data_root)
    check_classes(meta, splits.classes, args.checkpoint)
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


def with_workers(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus ``--workers N`` as ``workers=N`` (so the config validates it like any key)."""
    return [*args.set, f"workers={args.workers}"] if args.workers is not None else list(args.set)


def cmd_run(args: argparse.Namespace) -> int:
    from rlprune.config import SearchConfig, load_config
    from rlprune.jobs.pipeline import run_job

    cfg = load_config(args.config, SearchConfig, with_workers(args))
    out = run_job(
        cfg, resume=args.resume, progress=not args.quiet, trust_model_code=args.trust_model_code, force=args.force
    )
    print(json.dumps({k: v for k, v in out.to_dict().items() if k != "report_md"}))
    print(out.report_md)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from rlprune.config import SearchConfig, load_config
    from rlprune.searching.api import AGENTS, run_search
    from rlprune.searching.baselines import SEARCHERS

    agent = args.agent
    if getattr(args, "searcher", None):
        print("note: --searcher is the old spelling of --agent", file=sys.stderr)
        agent = agent or args.searcher
    if agent is not None and agent not in AGENTS and agent not in SEARCHERS:
        raise RLPruneError(f"--agent '{agent}': expected one of {', '.join(AGENTS + tuple(sorted(SEARCHERS)))}")
    if args.command == "train" and agent in SEARCHERS:
        raise RLPruneError(f"--agent '{agent}': 'train' runs an RL agent; use 'rlprune search --agent {agent}'")
    overrides = with_workers(args)
    if agent in AGENTS:
        overrides.append(f"agent.algorithm={agent}")
    cfg = load_config(args.config, SearchConfig, overrides)
    searcher = agent if agent in SEARCHERS else None
    if searcher and not any(o.startswith("name=") for o in args.set):
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-{searcher}"})
    summary = run_search(
        cfg, searcher=searcher, resume=args.resume, progress=not args.quiet, trust_model_code=args.trust_model_code
    )
    print(json.dumps(summary.to_dict()))
    return 0


def prune_options(args: argparse.Namespace) -> object:
    """``--ignore`` and ``--heads NAME=COUNT`` (or ``NAME=ATTRIBUTE``) as prune options (config ``prune.*``)."""
    from rlprune.pruning.options import PruneOptions

    heads: dict[str, int | str] = {}
    for item in args.heads:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise RLPruneError(f"--heads '{item[:60]}': expected MODULE=COUNT or MODULE=ATTRIBUTE (blocks.0.attn=4)")
        heads[name] = int(value) if value.isdecimal() and value.isascii() else value
    return PruneOptions.of(args.ignore, heads)


def finetune_common(
    args: argparse.Namespace, plan_fn: object, options: object = None, granularity: str = "channel"
) -> int:
    from pathlib import Path

    import torch

    from rlprune.data import splits_from_meta
    from rlprune.io.checkpoint import check_classes
    from rlprune.jobs.apply import load_dense
    from rlprune.jobs.finetune import finetune_plan

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
    recipe = validate(
        FinetuneConfig,
        {
            "epochs": args.finetune_epochs,
            "lr": args.lr,
            "distill": not args.no_distill,
            "batch_size": args.batch_size,
            "swa_epochs": args.swa_epochs,
            "swa_lr": args.swa_lr,
            "quantize": args.quantize,
        },
        "fine-tune",
    )
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RLPruneError(f"--out {out}: exists and is not an empty directory")
    options = options or prune_options(args)
    dense, meta, structure = load_dense(
        args.checkpoint,
        args.model,
        trust_model_code=args.trust_model_code,
        options=options,  # type: ignore[arg-type]
        granularity=granularity,
    )

    def load_checked() -> object:
        splits = splits_from_meta(meta, args.data_root)
        check_classes(meta, splits.classes, args.checkpoint)  # before any plan is scored or any weight trained
        return splits

    # Data is loaded once, and only after a plan_fn that does not need it has had its chance to reject bad input.
    get_splits = functools.cache(load_checked)
    plan, source = plan_fn(dense, meta, structure, get_splits)  # type: ignore[operator]
    splits = get_splits()
    report = finetune_plan(
        dense,
        meta,
        plan,
        splits,
        out,
        recipe,
        seed=args.seed,
        progress=not args.quiet,
        source=source,
        device=args.device,
    )
    sparse = report.sparse
    print(
        json.dumps(
            {
                "out": str(out),
                "macs_ratio": round(report.pruned.macs_ratio, 4),
                **({"nonzero_params_ratio": round(sparse["nonzero_ratio"], 4)} if sparse is not None else {}),
                "dense_test_accuracy": round(report.dense.test, 2),
                "test_accuracy": round(report.pruned.after_finetune.test, 2),
                "report": str(out / "report.md"),
                "tensorboard": f"tensorboard --logdir {out / 'finetune'}",
            }
        )
    )
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from rlprune.agents.policy_io import load_policy
    from rlprune.jobs.apply import apply_policy, default_proxy, example_input

    given = {
        k: v
        for k, v in (("macs", args.target_macs), ("latency", args.target_latency), ("params", args.target_params))
        if v is not None
    }
    if len(given) != 1:
        raise RLPruneError("give exactly one of --target-macs, --target-latency or --target-params")
    ((budget, target),) = given.items()
    if not 0 < target <= 1:
        raise RLPruneError(f"--target-{budget}: expected a ratio in (0, 1], got {target}")

    def plan_fn(dense, meta, structure, get_splits):
        policy = load_policy(args.policy)  # after the checkpoint: a model that cannot be pruned is the first error
        source = {"policy": args.policy, "checkpoint": args.checkpoint, "target": target, "budget": budget}
        scorer = None
        if args.samples or args.uniform_guard or args.adapt:
            importance = policy.info.importance
            granularity = structure.granularity
            scorer = default_proxy(dense, get_splits(), importance, args.device, structure.options, granularity)
        plan, picked = apply_policy(
            policy,
            dense,
            example_input(meta),
            target=target,
            budget=budget,
            samples=args.samples,
            scorer=scorer,
            seed=args.seed,
            threads=args.threads,
            force=args.force,
            ignore=structure.options.ignore,
            heads=structure.options.heads,
            uniform_guard=args.uniform_guard,
            adapt=args.adapt,
            adapt_dir=adapt_dir(args.out) if args.adapt else None,
        )
        chosen = picked if len(picked) > 2 else {"outside_training": picked["outside_training"]}
        return plan, source | chosen

    return finetune_common(args, plan_fn, granularity=saved_granularity(args.policy, "policy.json"))


def adapt_dir(out: str | Path) -> Path:
    """Where ``rlprune apply --adapt`` keeps its adaptation run: beside the output, ``<out>-adapt``."""
    out = Path(out)
    return out.with_name(f"{out.name}-adapt")


def saved_granularity(path: str, name: str) -> str:
    """What a saved policy or plan decides per unit (``channel`` when it does not say or cannot be read here: the
    loader that reads it properly reports what is wrong with it)."""
    import re

    from rlprune.agents.policy_io import policy_paths
    from rlprune.io.files import read_json
    from rlprune.io.schemas import GRANULARITY_PATTERN

    try:
        saved = read_json(policy_paths(path)[1] if name == "policy.json" else path, "saved file")
    except RLPruneError:
        return "channel"
    value = saved.get("granularity", "channel") if isinstance(saved, dict) else "channel"
    return value if isinstance(value, str) and re.match(GRANULARITY_PATTERN, value) else "channel"


def cmd_finetune(args: argparse.Namespace) -> int:
    from collections.abc import Mapping

    from rlprune.io.files import read_json
    from rlprune.pruning import Plan
    from rlprune.pruning.options import PruneOptions

    def plan_fn(dense, meta, structure, get_splits):
        plan = Plan.load(args.plan, structure)  # a saved plan or a hand-written {"ratios": ...}
        plan.check(structure, args.plan)
        return plan, {"plan": args.plan, "checkpoint": args.checkpoint}

    options = prune_options(args)
    if not options:  # a saved plan says what its model was analyzed with
        saved = read_json(args.plan, "plan file")
        if isinstance(saved, Mapping) and "format" in saved:
            try:
                options = PruneOptions.of(saved.get("ignore"), saved.get("heads"))
            except (TypeError, ValueError):  # PruneOptions checks the values, not the shapes around them
                raise RLPruneError(
                    f"{args.plan}: 'ignore' must be a list of names and 'heads' a mapping of names to counts"
                ) from None
    return finetune_common(args, plan_fn, options, saved_granularity(args.plan, "plan.json"))
