"""Console + run-directory logging that plays well with tqdm progress bars."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


def setup_logging(log_file: Path | None = None, verbose: bool = True) -> None:
    """Log ``rlprune.*`` to the console (through tqdm) and, if given, append to ``log_file``."""
    logger = logging.getLogger("rlprune")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if verbose:
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(fh)
    logger.propagate = False


@contextlib.contextmanager
def kept_logging() -> Iterator[None]:
    """Give the ``rlprune`` logger back its handlers, level and propagation afterwards: a job run inside another (an
    adaptation's search inside an apply) logs to its own run directory without taking over its caller's log."""
    logger = logging.getLogger("rlprune")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)  # a file handler closed meanwhile reopens on its next record
        logger.setLevel(level)
        logger.propagate = propagate
