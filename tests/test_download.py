"""First-use download: fetched through urllib (a local file:// archive here), checksum-verified, unpacked once, and
found by ``load_splits`` with no path configured."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_data import _write_batches

from rlprune.data import download, load_splits
from rlprune.errors import RLPruneError


def _archive(tmp_path: Path) -> tuple[str, str]:
    folder = tmp_path / "src" / "cifar-10-batches-py"
    _write_batches(folder, np.random.default_rng(0))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive.resolve().as_uri(), hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()


def test_download_checks_the_checksum_and_unpacks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, md5 = _archive(tmp_path)
    with pytest.raises(RLPruneError, match="wrong checksum"):
        download.download_cifar10(tmp_path / "bad", url=url, md5="0" * 32, progress=False)
    assert not any((tmp_path / "bad").iterdir())  # nothing half-written: the temporary archive is gone
    got = download.download_cifar10(tmp_path / "dl", url=url, md5=md5, progress=False)
    assert (got / "test_batch").is_file()
    (tmp_path / "cifar-10-python.tar.gz").unlink()  # a second call does not fetch again
    assert download.download_cifar10(tmp_path / "dl", url=url, md5=md5, progress=False) == got


def test_load_splits_downloads_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, md5 = _archive(tmp_path)
    monkeypatch.delenv("RLPRUNE_DATA", raising=False)
    real = download.download_cifar10
    fetched = []

    def fetch(dest: Path) -> Path:
        fetched.append(dest)
        return real(dest, url=url, md5=md5, progress=False)

    monkeypatch.setattr("rlprune.data.download_cifar10", fetch)
    splits = load_splits("cifar10", val_size=10)
    assert len(fetched) == 1 and len(splits.test) == 20
    load_splits("cifar10", val_size=10)  # the cache is found: no second download
    assert len(fetched) == 1
    with pytest.raises(RLPruneError, match="no CIFAR-10 found"):
        monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "empty-cache"))
        load_splits("cifar10", val_size=10, download=False)
