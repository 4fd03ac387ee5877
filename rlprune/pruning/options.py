"""What a user tells rlprune about a model that cannot be found from the model itself.

Two things, given as config keys (``prune.ignore``, ``prune.heads``), keyword arguments of
:func:`rlprune.analyze` (``ignore=``, ``heads=``) or ``rlprune apply/finetune`` flags (``--ignore``, ``--heads``):

- **ignore**: module or parameter names (or glob patterns, ``blocks.*.attn``) to leave exactly as they are. Every
  unit coupled to an ignored part keeps all its channels, so a layer rlprune cannot prune (a hand-written matmul
  with its own weight, a relative-position table) stops being a refusal and becomes a fixed cost.
- **heads**: attention module name (or pattern) -> its head count, or the name of the integer attribute holding it
  (which is then updated after pruning), for attentions whose head count is not in a ``num_heads``-like attribute.

They travel with the :class:`~rlprune.pruning.structure.Structure` and every plan made from it (and so with a pruned
checkpoint's plan): a pruned model is rebuilt with the same options it was pruned with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from rlprune.errors import RLPruneError

IGNORE_KEY = "prune.ignore"
HEADS_KEY = "prune.heads"


def matches(name: str, pattern: str) -> bool:
    """``name`` is ``pattern`` (a glob) or lies inside a module it names."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def ignore_hint(name: str) -> str:
    """How to leave ``name`` unpruned, in every interface's terms (for refusal messages)."""
    return (
        f"leave it unpruned with {IGNORE_KEY}: ['{name}'] (Python: ignore=['{name}']; apply/finetune: --ignore {name})"
    )


def heads_hint(name: str) -> str:
    """How to give ``name``'s head count, in every interface's terms (for refusal messages)."""
    given = f"{{'{name}': <heads>}}"
    return f"give it with {HEADS_KEY}: {given} (Python: heads={given}; apply/finetune: --heads {name}=<heads>)"


@dataclass(frozen=True)
class PruneOptions:
    """Parts to leave alone and head counts to use; empty by default (everything found from the model)."""

    ignore: tuple[str, ...] = ()
    heads: Mapping[str, int | str] = field(default_factory=dict)

    @classmethod
    def of(cls, ignore: Iterable[str] | None = None, heads: Mapping[str, int | str] | None = None) -> PruneOptions:
        """Validated options from user input (config, keyword arguments or a saved plan)."""
        if isinstance(ignore, str):
            ignore = [ignore]  # one name given bare
        patterns = tuple(ignore or ())
        for p in patterns:
            if not isinstance(p, str) or not p.strip():
                raise RLPruneError(f"{IGNORE_KEY}: expected module or parameter names, got {p!r:.60}")
        given: dict[str, int | str] = {}
        for name, value in dict(heads or {}).items():
            ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (
                isinstance(value, str) and value.isidentifier()
            )
            if not isinstance(name, str) or not name or not ok:
                raise RLPruneError(
                    f"{HEADS_KEY}: '{str(name)[:60]}': expected a head count > 0 or the name of the attribute that "
                    f"holds it, got {value!r:.40}"
                )
            given[name] = value
        return cls(patterns, given)

    def __bool__(self) -> bool:
        return bool(self.ignore or self.heads)

    def ignores(self, name: str) -> bool:
        return any(matches(name, p) for p in self.ignore)

    def given_heads(self, module: str) -> int | str | None:
        """The head count (or attribute name) given for attention module ``module``, if any pattern names it."""
        for pattern, value in self.heads.items():
            if fnmatchcase(module, pattern):
                return value
        return None

    def check_names(self, model: nn.Module, also: Iterable[str] = ()) -> None:
        """Refuse a pattern that names nothing in ``model`` (a typo would otherwise silently do nothing).

        :param also: further names a pattern may name (the weight-level layer names of attention projections).
        """
        modules = [n for n, _ in model.named_modules() if n]
        names = modules + [n for n, _ in model.named_parameters()] + list(also)
        for pattern in self.ignore:
            if not any(matches(n, pattern) for n in names):
                raise RLPruneError(f"{IGNORE_KEY}: '{pattern[:80]}' names no module or parameter of the model")
        for pattern in self.heads:
            if not any(fnmatchcase(n, pattern) for n in modules):
                raise RLPruneError(f"{HEADS_KEY}: '{pattern[:80]}' names no module of the model")

    def to_dict(self) -> dict[str, Any]:
        """The non-empty options as JSON (a plan's ``ignore`` / ``heads`` keys)."""
        out: dict[str, Any] = {}
        if self.ignore:
            out["ignore"] = list(self.ignore)
        if self.heads:
            out["heads"] = dict(self.heads)
        return out


__all__ = ["HEADS_KEY", "IGNORE_KEY", "PruneOptions", "heads_hint", "ignore_hint", "matches"]
