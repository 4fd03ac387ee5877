"""Shared fixtures: a small generated image-folder dataset and an isolated dataset cache."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "square", "stripes")


def _draw(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A learnable image: the class decides the dominant colour channel and the pattern, noise the rest."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    if cls == 0:
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    elif cls == 1:
        mask = (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4)
    else:
        mask = (xx // 3) % 2 == 0
    img[mask, cls] = 200 + rng.integers(0, 55, int(mask.sum()), dtype=np.uint8)
    return img


def make_image_folder(
    root: Path,
    train_per_class: int = 20,
    test_per_class: int = 6,
    size: int = 32,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    fmt: str = "png",
) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_draw(c % 3, rng, size)).save(d / f"{i:04d}.{fmt}")
    return root


def make_tarball(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(folder / split, arcname=split)
    return dest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes")
