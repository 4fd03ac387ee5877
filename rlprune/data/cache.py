"""Decode once, reuse many times: a validated on-disk cache of decoded splits as ``.npy`` arrays + JSON.

A cache entry is trusted only if its metadata names the same source fingerprint, and the arrays have the recorded
shapes, dtype and per-class counts. Arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rlprune.data.sources import Split, walk
from rlprune.errors import RLPruneError

CACHE_FORMAT = 2  # entries of another format are decoded again


def cache_root() -> Path:
    """``$RLPRUNE_CACHE`` or ``~/.cache/rlprune``."""
    return Path(os.environ.get("RLPRUNE_CACHE", Path.home() / ".cache" / "rlprune"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes, or of a directory's listing: every file's (relative path, size, mtime) and every
    folder's relative path, so that an added (even empty) class folder is a new source, not a cache hit; symlinked
    folders are followed, as the reader follows them."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    entries = sorted(walk(path))  # one walk for both lists (it follows symlinked folders, as the reader does)
    for f in (p for p in entries if p.is_file()):
        st = f.stat()
        # os.fsencode: a name that is not UTF-8 (an archive unpacked from another system) is still bytes to hash
        digest.update(os.fsencode(f.relative_to(path)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for d in (p for p in entries if p.is_dir()):
        digest.update(os.fsencode(d.relative_to(path)) + b"/\n")
    return digest.hexdigest()


def _valid(entry: Path, fingerprint: str) -> tuple[dict[str, Split], list[str]] | None:
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("source_sha256") != fingerprint:
            return None
        splits: dict[str, Split] = {}
        for split, info in meta["splits"].items():
            images = np.load(entry / f"{split}_images.npy", allow_pickle=False, mmap_mode=None)
            labels = np.load(entry / f"{split}_labels.npy", allow_pickle=False)
            if images.dtype != np.uint8 or list(images.shape) != info["shape"] or labels.dtype != np.int64:
                return None
            if np.bincount(labels, minlength=len(meta["classes"])).tolist() != info["class_counts"]:
                return None
            splits[split] = (images, labels)
        return splits, list(meta["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_decode(
    source: Path, key: str, decode: Callable[[], tuple[dict[str, Split], list[str]]]
) -> tuple[dict[str, Split], list[str], str]:
    """Return decoded splits for ``source`` from the cache, decoding (and caching atomically) when absent or stale.

    :param source: the file or directory decoded.
    :param key: what else the decoding depends on (image size, channels, reader).
    :param decode: the decoding function, called only on a cache miss.
    :returns: splits, classes, the source fingerprint.
    """
    fingerprint = source_fingerprint(source)
    entry = cache_root() / "datasets" / hashlib.sha256(f"{fingerprint}:{key}:{CACHE_FORMAT}".encode()).hexdigest()[:24]
    hit = _valid(entry, fingerprint)
    if hit is not None:
        return hit[0], hit[1], fingerprint
    splits, classes = decode()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        meta = {
            "format": CACHE_FORMAT,
            "source": str(source),
            "source_sha256": fingerprint,
            "key": key,
            "classes": classes,
            "splits": {},
        }
        for split, (images, labels) in splits.items():
            np.save(tmp / f"{split}_images.npy", images, allow_pickle=False)
            np.save(tmp / f"{split}_labels.npy", labels, allow_pickle=False)
            meta["splits"][split] = {
                "shape": list(images.shape),
                "class_counts": np.bincount(labels, minlength=len(classes)).tolist(),
            }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RLPruneError(f"{entry}: cannot write dataset cache ({exc})") from exc
    return splits, classes, fingerprint
