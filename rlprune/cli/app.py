"""Command-line entry point: ``rlprune <command> ...``.

Every user error ends in one line on stderr (``error: ...``) and exit status 2; the library names the remedy
(``RLPruneError.fix``) and :data:`FIXES` says which flag applies it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rlprune.cli.parser import build_parser
from rlprune.errors import RLPruneError
from rlprune.io.safe import disk_error
from rlprune.io.trust import UntrustedCodeError

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
