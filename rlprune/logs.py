"""Console + run-directory logging that plays well with tqdm progress bars."""

from __future__ import annotations

import logging
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
