"""Writing and reading files safely: atomic replacement (readers never see half a file) and validated JSON."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rlprune.io.safe import read_json_file, writing


def make_readable(path: str | Path) -> None:
    """Give a temporary file (created 0600 by mkstemp) the permissions a normally created file would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, then rename: readers never see half a file."""
    with writing(path):  # a full disk is one line, and the old file stays as it was
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            make_readable(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line error naming it and what it should be.

    Size, depth and finite-number limits apply (:func:`rlprune.io.safe.parse_json`): ``NaN`` is not JSON.
    """
    return read_json_file(Path(path), what)


__all__ = ["atomic_write_text", "make_readable", "read_json"]
