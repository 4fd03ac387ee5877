"""Fetching the official CIFAR-10 archive on first use (``data.download``, on by default), with a progress bar and
checksum verification; an offline machine gets a one-line error that says where to put the files instead."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from rlprune.errors import RLPruneError
from rlprune.io.safe import clip

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# Known archives and their sha256, checked whenever one of these file names is loaded.
KNOWN_SHA256 = {
    "cifar10-jpeg.tar.gz": "00b12538ccdc555423035940a31a64c6f807d70a29b30279882e4ed6bad655c0",
}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_cifar10(
    dest: Path, url: str = CIFAR10_URL, timeout: float = 30.0, progress: bool = True, md5: str = CIFAR10_MD5
) -> Path:
    """Download and unpack the official CIFAR-10 python archive into ``dest``; return the batches folder.

    The archive's MD5 is checked before unpacking. Without network access this fails with a message that says
    where to put the files instead.
    """
    target = dest / "cifar-10-batches-py"
    if (target / "test_batch").is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".cifar10-", suffix=".tar.gz", dir=dest)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise RLPruneError(
                f"data.download: cannot fetch {url} ({exc}); without internet, put 'cifar-10-batches-py/' or "
                f"'cifar10-jpeg.tar.gz' in $RLPRUNE_DATA, or set data.root"
            ) from exc
        try:
            digest = _md5(tmp)
        except OSError as exc:
            raise RLPruneError(f"{tmp}: cannot read the downloaded archive ({exc})") from exc
        if digest != md5:
            raise RLPruneError(f"{url}: downloaded archive has the wrong checksum (expected md5 {md5})")
        # unpacked beside the target and renamed into place: an interrupted unpack never leaves a folder that looks
        # complete (a partial one is replaced)
        unpack = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=dest))
        try:
            with tarfile.open(tmp, "r:gz") as tar:
                tar.extractall(unpack, filter="data")
            if not (unpack / target.name / "test_batch").is_file():
                raise RLPruneError(f"{url}: the archive holds no '{target.name}/test_batch'")
            if target.exists():
                shutil.rmtree(target)
            os.replace(unpack / target.name, target)
        except (OSError, tarfile.TarError) as exc:
            raise RLPruneError(f"{dest}: cannot unpack the CIFAR-10 archive here ({clip(str(exc), 80)})") from exc
        finally:
            shutil.rmtree(unpack, ignore_errors=True)
    finally:
        tmp.unlink(missing_ok=True)
    return target
