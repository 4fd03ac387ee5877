"""Command-line entry point: ``rlprune <command> ...``.

Every user error ends in one line on stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from rlprune.errors import RLPruneError
from rlprune.io.safe import disk_error
from rlprune.io.trust import UntrustedCodeError

TRUST_HELP = "import model code (package.module:factory) named in the checkpoint; only for checkpoints you trust"


def _cmd_pretrain(args: argparse.Namespace) -> int:
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
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


def _with_workers(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus ``--workers N`` as ``workers=N`` (so the config validates it like any key)."""
    return [*args.set, f"workers={args.workers}"] if args.workers is not None else list(args.set)


def _cmd_run(args: argparse.Namespace) -> int:
    from rlprune.config import SearchConfig, load_config
    from rlprune.jobs.pipeline import run_job

    cfg = load_config(args.config, SearchConfig, _with_workers(args))
    out = run_job(
        cfg, resume=args.resume, progress=not args.quiet, trust_model_code=args.trust_model_code, force=args.force
    )
    print(json.dumps({k: v for k, v in out.items() if k != "report_md"}))
    print(out["report_md"])
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from rlprune.config import SearchConfig, load_config
    from rlprune.search.baselines import SEARCHERS
    from rlprune.search.run import AGENTS, run_search

    agent = args.agent
    if getattr(args, "searcher", None):
        print("note: --searcher is the old spelling of --agent", file=sys.stderr)
        agent = agent or args.searcher
    if agent is not None and agent not in AGENTS and agent not in SEARCHERS:
        raise RLPruneError(f"--agent '{agent}': expected one of {', '.join(AGENTS + tuple(sorted(SEARCHERS)))}")
    if args.command == "train" and agent in SEARCHERS:
        raise RLPruneError(f"--agent '{agent}': 'train' runs an RL agent; use 'rlprune search --agent {agent}'")
    overrides = _with_workers(args)
    if agent in AGENTS:
        overrides.append(f"agent.algorithm={agent}")
    cfg = load_config(args.config, SearchConfig, overrides)
    searcher = agent if agent in SEARCHERS else None
    if searcher and not any(o.startswith("name=") for o in args.set):
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-{searcher}"})
    summary = run_search(
        cfg, searcher=searcher, resume=args.resume, progress=not args.quiet, trust_model_code=args.trust_model_code
    )
    print(json.dumps(summary))
    return 0


def _prune_options(args: argparse.Namespace) -> object:
    """``--ignore`` and ``--heads NAME=COUNT`` (or ``NAME=ATTRIBUTE``) as prune options (config ``prune.*``)."""
    from rlprune.pruning.options import PruneOptions

    heads: dict[str, int | str] = {}
    for item in args.heads:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise RLPruneError(f"--heads '{item[:60]}': expected MODULE=COUNT or MODULE=ATTRIBUTE (blocks.0.attn=4)")
        heads[name] = int(value) if value.isdecimal() and value.isascii() else value
    return PruneOptions.of(args.ignore, heads)


def _finetune_common(
    args: argparse.Namespace, plan_fn: object, options: object = None, granularity: str = "channel"
) -> int:
    from pathlib import Path

    import torch

    from rlprune.data import splits_from_meta
    from rlprune.io.checkpoint import check_classes
    from rlprune.jobs.apply import finetune_plan, load_dense

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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RLPruneError(f"--out {out}: exists and is not an empty directory")
    options = options or _prune_options(args)
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
        epochs=args.finetune_epochs,
        lr=args.lr,
        swa_epochs=args.swa_epochs,
        swa_lr=args.swa_lr,
        quantize=args.quantize,
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
                **({"nonzero_params_ratio": round(report["sparse"]["nonzero_ratio"], 4)} if "sparse" in report else {}),
                "dense_test_accuracy": round(report["dense"]["test"], 2),
                "test_accuracy": round(after["test"], 2),
                "report": str(out / "report.md"),
                "tensorboard": f"tensorboard --logdir {out / 'finetune'}",
            }
        )
    )
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
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
        if args.samples or args.uniform_guard:
            importance = policy.meta.get("importance", "l1")
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
        )
        chosen = picked if args.samples or args.uniform_guard else {"outside_training": picked["outside_training"]}
        return plan, source | chosen

    return _finetune_common(args, plan_fn, granularity=_saved_granularity(args.policy, "policy.json"))


def _saved_granularity(path: str, name: str) -> str:
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


def _cmd_finetune(args: argparse.Namespace) -> int:
    from collections.abc import Mapping

    from rlprune.io.files import read_json
    from rlprune.pruning import Plan
    from rlprune.pruning.options import PruneOptions

    def plan_fn(dense, meta, structure, get_splits):
        plan = Plan.load(args.plan, structure)  # a saved plan or a hand-written {"ratios": ...}
        plan.check(structure, args.plan)
        return plan, {"plan": args.plan, "checkpoint": args.checkpoint}

    options = _prune_options(args)
    if not options:  # a saved plan says what its model was analyzed with
        saved = read_json(args.plan, "plan file")
        if isinstance(saved, Mapping) and "format" in saved:
            try:
                options = PruneOptions.of(saved.get("ignore"), saved.get("heads"))
            except (TypeError, ValueError):  # PruneOptions checks the values, not the shapes around them
                raise RLPruneError(
                    f"{args.plan}: 'ignore' must be a list of names and 'heads' a mapping of names to counts"
                ) from None
    return _finetune_common(args, plan_fn, options, _saved_granularity(args.plan, "plan.json"))


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="dense checkpoint (<name>.json)")
    p.add_argument("--model", default=None, help="zoo name or package.module:factory (default: from the checkpoint)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--finetune-epochs", type=_int_at_least(1), default=1)
    p.add_argument(
        "--swa-epochs", type=_int_at_least(0), default=0, help="average the last N fine-tune epochs (SWA); 0 = off"
    )
    p.add_argument("--swa-lr", type=_positive, default=None, help="the lr held during SWA (default: half of --lr)")
    p.add_argument("--lr", type=_positive, default=0.02)
    p.add_argument("--batch-size", type=_int_at_least(1), default=128)
    p.add_argument("--no-distill", action="store_true", help="fine-tune on labels only (default: distill from dense)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=_int_at_least(0), default=0)  # NumPy and torch seeds are non-negative
    p.add_argument("--threads", type=_int_at_least(1), default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (CUDA when present)")
    p.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="also quantize the pruned model to int8 (ONNX Runtime static, train-split calibration) and report it",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="NAME",
        help="leave this module or parameter (name or glob pattern) and every unit coupled to it unpruned "
        "(config key prune.ignore; finetune: default from the saved plan)",
    )
    p.add_argument(
        "--heads",
        action="append",
        default=[],
        metavar="MODULE=COUNT",
        help="an attention's head count (or the name of its attribute) when rlprune cannot find it (prune.heads)",
    )
    p.add_argument("--trust-model-code", action="store_true", help=TRUST_HELP)
    p.add_argument("--quiet", action="store_true")


# How to fix an error, in this interface's terms (the library names the remedy, never a flag).
FIXES = {
    "resume": "pass --resume to continue it",
    "rename": "set another name (--set name=...)",
    "resume_or_rename": "pass --resume to continue it or set another name (--set name=...)",
    "restart": "start over with --restart",
    "restart_or_rename": "start over with --restart or set another name (--set name=...)",
    "several_checkpoints": "train an RL agent (rlprune train) in one process (no --agent baseline, --workers 1)",
    "force": "pass --force to apply it anyway",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line on stderr, exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())[:250]}\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:30]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:30]!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text[:30]!r}")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:30]!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlprune", description="Learn per-layer pruning ratios with RL.")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_command(name: str, help_: str, func: object, resume_help: str | None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help="experiment YAML (see experiments/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        if resume_help:
            p.add_argument("--resume", action="store_true", help=resume_help)
        p.add_argument("--trust-model-code", action="store_true", help=TRUST_HELP)
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
    for name, help_ in (
        ("search", "search per-layer pruning ratios: an RL agent (PPO by default) or a baseline"),
        ("train", "the same as 'search', with an RL agent"),
    ):
        p = config_command(name, help_, _cmd_search, "continue the run in runs/<name>/")
        p.add_argument(
            "--agent",
            default=None,
            help="ppo | ddpg | sac | td3 (RL; default: the config's agent.algorithm) or uniform | random | evolution "
            "(baselines, run in runs/<name>-<agent>/)",
        )
        p.add_argument("--searcher", default=None, help=argparse.SUPPRESS)  # the old spelling of --agent
    p = config_command(
        "run",
        "the main job: search (or apply the config's policy), fine-tune the best plan, export and report",
        _cmd_run,
        "continue an interrupted run",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="apply the config's policy (or rounds.policy) at a target outside what it was trained for",
    )
    for name in ("train", "run", "search"):
        sub.choices[name].add_argument(
            "--workers",
            type=_int_at_least(1),
            default=None,
            help="score plans on N Ray actors (config key workers; rlprune[ray])",
        )

    p = sub.add_parser("apply", help="roll a learned policy out on a model, prune, fine-tune, export, report")
    p.add_argument("--policy", required=True, help="run directory or policy.json of a search")
    p.add_argument("--target-macs", type=_number, default=None, help="pruned/dense MACs ratio")
    p.add_argument(
        "--target-latency",
        type=_number,
        default=None,
        help="pruned/dense CPU latency ratio, timed as the policy's training timed it (batch size, runtime)",
    )
    p.add_argument(
        "--target-params", type=_number, default=None, help="non-zero/dense parameters (a weight-level policy)"
    )
    p.add_argument(
        "--samples",
        type=_int_at_least(0),
        default=0,
        help="also draw N plans from the policy's distribution (seeded by --seed) and keep the one the search's "
        "proxy scores best on the validation split (a few seconds per plan); 0 = the deterministic rollout",
    )
    p.add_argument(
        "--uniform-guard",
        action="store_true",
        help="also score the uniform plan at the same target on the validation split and keep it if the policy's "
        "plans score lower (one more scored plan; a policy can lose to uniform on a family it never saw)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="apply the policy at a target or budget kind outside what it was trained for (refused otherwise)",
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
    p.add_argument("--batch-size", type=_int_at_least(1), default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=_int_at_least(1), default=None)
    p.add_argument("--trust-model-code", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error (one line, printed by _Parser.error) or --help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args))
    except UntrustedCodeError as exc:
        print(f"error: {exc.with_hint('rerun with --trust-model-code')}", file=sys.stderr)
        return 2
    except RLPruneError as exc:
        fix = FIXES.get(exc.fix or "")
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"error: {message}" + (f"; {fix}" if fix else ""), file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a read-only folder somewhere no library call translated it
        error = disk_error(exc, exc.filename or "output")
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
