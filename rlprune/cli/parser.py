"""The ``rlprune`` argument parser: one sub-command per job, each flag typed and checked (a bad value is one
line and exit status 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from rlprune.cli.commands import TRUST_HELP, cmd_apply, cmd_evaluate, cmd_finetune, cmd_pretrain, cmd_run, cmd_search


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
    """The ``rlprune`` parser; each sub-command's ``func`` default is the command to call with its arguments."""
    parser = _Parser(prog="rlprune", description="Learn per-layer pruning ratios with RL.")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_commands(sub)
    _apply_command(sub)
    p = sub.add_parser("finetune", help="prune with a saved plan, fine-tune, export, report")
    p.add_argument("--plan", required=True, help="plan JSON (e.g. a search's best_plan.json)")
    _add_finetune_args(p)
    p.set_defaults(func=cmd_finetune)
    _evaluate_command(sub)
    return parser


def _config_commands(sub: Any) -> None:
    """The commands that run a YAML config: pretrain, search, train, run."""

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

    p = config_command("pretrain", "train a dense model from a YAML config", cmd_pretrain, None)
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
        p = config_command(name, help_, cmd_search, "continue the run in runs/<name>/")
        p.add_argument(
            "--agent",
            default=None,
            help="ppo | ddpg | sac | td3 (RL; default: the config's agent.algorithm) or uniform | random | evolution "
            "| tp-global | tp-global-l1 | tp-isomorphic (baselines, run in runs/<name>-<agent>/)",
        )
        p.add_argument("--searcher", default=None, help=argparse.SUPPRESS)  # the old spelling of --agent
    p = config_command(
        "run",
        "the main job: search (or apply the config's policy), fine-tune the best plan, export and report",
        cmd_run,
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


def _apply_command(sub: Any) -> None:
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
        "--adapt",
        type=_int_at_least(0),
        default=0,
        help="continue the policy's training on this model for N episodes (scored by the search's proxy on the "
        "validation split) and keep its best plan if it scores higher; the run is kept in <--out>-adapt/ and "
        "resumed there; 0 = no adaptation",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="apply the policy at a target or budget kind outside what it was trained for (refused otherwise)",
    )
    _add_finetune_args(p)
    p.set_defaults(func=cmd_apply)


def _evaluate_command(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="path to <name>.json / <name>.safetensors (or <name>)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--data-root", default=None, help="dataset file or folder (default: the usual locations)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=_int_at_least(1), default=None)
    p.add_argument("--trust-model-code", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_evaluate)
