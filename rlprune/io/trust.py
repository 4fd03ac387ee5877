"""Which model code may be imported: the rule that keeps a shared file from running code on the reader's machine.

A model is named either by a zoo name (``resnet20``: built-in code, always allowed) or by an import path
(``package.module:factory``: importing it runs that module's code, calling it runs the factory). An import path is
only followed when the reader vouches for it, the Hugging Face convention (``trust_remote_code=False`` by default):

- the user wrote it themselves: a ``--model`` flag, ``model.name`` in their own pretrain config, a ``model_name`` /
  ``build_model`` argument in their own code;
- the user passed ``trust_model_code=True`` (CLI: ``--trust-model-code``) for this command;
- its module is under a prefix the user listed in ``$RLPRUNE_TRUSTED_MODULES`` (comma-separated, e.g.
  ``mycompany.models,netlib``): their own environment, never a file they were handed.

An import path found in a file (checkpoint sidecar) is refused otherwise, before anything is imported.
"""

from __future__ import annotations

import os

from rlprune.errors import RLPruneError
from rlprune.io.safe import quote

TRUSTED_MODULES_ENV = "RLPRUNE_TRUSTED_MODULES"


class UntrustedCodeError(RLPruneError):
    """A file names model code the user has not said they trust; ``name`` is the import path."""

    def __init__(self, source: str, name: str) -> None:
        self.source, self.name = source, name
        super().__init__(self.with_hint("pass trust_model_code=True"))

    def with_hint(self, how: str) -> str:
        """The one-line refusal, ending in how to trust the code (the library names its argument, the CLI its flag)."""
        module = self.name.partition(":")[0][:60]
        return (
            f"{self.source}: names model code {quote(self.name, 80)}, which is not imported unless you trust it "
            f"({how}, or add '{module}' to ${TRUSTED_MODULES_ENV})"
        )


def trusted_prefixes() -> list[str]:
    """Module prefixes the user trusts, from ``$RLPRUNE_TRUSTED_MODULES``."""
    raw = os.environ.get(TRUSTED_MODULES_ENV, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def is_trusted(name: str, trust_model_code: bool = False) -> bool:
    """True for a zoo name, with ``trust_model_code``, or for a module under a ``$RLPRUNE_TRUSTED_MODULES`` prefix."""
    from rlprune.models import MODELS

    if name in MODELS or trust_model_code:
        return True
    module = name.partition(":")[0]
    return any(module == p or module.startswith(p + ".") for p in trusted_prefixes())


def require_trusted(name: str, source: str, trust_model_code: bool = False) -> None:
    """Refuse (one line naming the file and the import path) to import model code a file names, unless trusted."""
    if is_trusted(name, trust_model_code):
        return
    raise UntrustedCodeError(source, name)
