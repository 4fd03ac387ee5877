from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_image_folder, make_tarball
from PIL import Image

from rlprune.data import BatchLoader, load_splits, random_crop_flip, stratified_split
from rlprune.data.loader import cutout_mask
from rlprune.errors import RLPruneError


def test_image_folder_loads_split_and_normalizes(image_folder: Path) -> None:
    s = load_splits("imagefolder", image_folder, val_size=6, seed=1)
    assert s.classes == sorted(CLASSES)
    assert (len(s.train), len(s.val), len(s.test)) == (54, 6, 18)
    assert s.val.class_counts() == [2, 2, 2]
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (3, 32, 32)
    assert all(0 < m < 1 for m in s.mean) and all(0 < v < 1 for v in s.std)


def test_tarball_equals_directory(image_folder: Path, tmp_path: Path) -> None:
    tar = make_tarball(image_folder, tmp_path / "shapes.tar.gz")
    a = load_splits("imagefolder", image_folder, val_size=6)
    b = load_splits("imagefolder", tar, val_size=6)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)


def test_cache_is_reused_and_invalidated(image_folder: Path, tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "d", 4, 2)
    first = load_splits("imagefolder", folder, val_size=3)
    cached = list((Path(__import__("os").environ["RLPRUNE_CACHE"]) / "datasets").iterdir())
    assert len(cached) == 1
    again = load_splits("imagefolder", folder, val_size=3)
    assert torch.equal(first.train.images, again.train.images)
    # A changed source gets a new entry rather than the stale one.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "train" / "circle" / "9999.png")
    changed = load_splits("imagefolder", folder, val_size=3)
    assert len(changed.train) + len(changed.val) == len(first.train) + len(first.val) + 1


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "d", 4, 2)
    first = load_splits("imagefolder", folder, val_size=3)
    entry = next((Path(__import__("os").environ["RLPRUNE_CACHE"]) / "datasets").iterdir())
    np.save(entry / "train_labels.npy", np.zeros(12, dtype=np.int64))  # wrong class counts
    again = load_splits("imagefolder", folder, val_size=3)
    assert torch.equal(first.train.labels, again.train.labels)


def test_grayscale_and_resize(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "big", 3, 2, size=48)
    s = load_splits("imagefolder", folder, val_size=0, input_size=24, channels=1)
    assert s.train.images.shape[1:] == (1, 24, 24)
    rgb = load_splits("imagefolder", folder, val_size=0, input_size=24, channels=3)
    assert rgb.train.images.shape[1:] == (3, 24, 24)


def test_split_is_seeded_disjoint_and_stratified() -> None:
    labels = torch.arange(1000) % 7
    tr1, va1 = stratified_split(labels, 140, seed=3)
    _, va2 = stratified_split(labels, 140, seed=3)
    _, va3 = stratified_split(labels, 140, seed=4)
    assert np.array_equal(va1, va2) and not np.array_equal(va1, va3)
    assert not set(tr1) & set(va1) and len(tr1) + len(va1) == 1000
    assert np.bincount(labels.numpy()[va1]).tolist() == [20] * 7


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RLPruneError, match="does not exist"):
        load_splits("imagefolder", tmp_path / "nope")
    empty = make_image_folder(tmp_path / "e", 2, 2)
    for f in (empty / "train" / "square").iterdir():
        f.unlink()
    with pytest.raises(RLPruneError, match="train/square' holds no images"):
        load_splits("imagefolder", empty, val_size=1)
    bad = make_image_folder(tmp_path / "b", 2, 2)
    (bad / "test" / "circle" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(RLPruneError, match=r"test/circle/0000.png: cannot decode"):
        load_splits("imagefolder", bad, val_size=1)
    diff = make_image_folder(tmp_path / "c", 2, 2)
    (diff / "test" / "square").rename(diff / "test" / "triangle")
    with pytest.raises(RLPruneError, match="class folders differ.*square, triangle"):
        load_splits("imagefolder", diff, val_size=1)
    tar = make_tarball(make_image_folder(tmp_path / "t", 2, 2), tmp_path / "t.tar.gz")
    with pytest.raises(RLPruneError, match="wrong checksum"):
        load_splits("imagefolder", tar, val_size=1, sha256="0" * 64)


def _write_batches(folder: Path, rng: np.random.Generator, n: int = 20) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(10)) * (n // 10)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar_python_format(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder, np.random.default_rng(0))
    s = load_splits("cifar10", folder, val_size=10)
    assert len(s.train) + len(s.val) == 100 and len(s.test) == 20
    assert s.classes == [f"c{i}" for i in range(10)] and s.train.images.shape[1:] == (3, 32, 32)
    # The root folder holding cifar-10-batches-py also works.
    assert len(load_splits("cifar10", tmp_path, val_size=10).test) == 20


class _Exploit:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path("/tmp/rlprune-pwned"),))


def test_malicious_batch_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder, np.random.default_rng(0))
    marker = Path("/tmp/rlprune-pwned")
    marker.unlink(missing_ok=True)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(RLPruneError, match="data_batch_3: not a valid CIFAR batch.*refusing to load global"):
        load_splits("cifar10", folder, val_size=10)
    assert not marker.exists()


def test_download_without_network_says_where_to_put_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlprune.data import download

    monkeypatch.setenv("RLPRUNE_DATA", str(tmp_path / "empty"))
    with pytest.raises(RLPruneError, match="cannot fetch .*RLPRUNE_DATA"):
        download.download_cifar10(tmp_path / "dl", url="http://127.0.0.1:9/cifar.tar.gz", timeout=2)
    assert not any((tmp_path / "dl").glob("*.tar.gz"))


def test_augmentation_keeps_content_and_is_seeded() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(images, 4, torch.Generator().manual_seed(0))
    b = random_crop_flip(images, 4, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    same = random_crop_flip(images, 0, torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(s, i.flip(2)) for s, i in zip(same, images, strict=True)])
    unchanged = torch.tensor([torch.equal(s, i) for s, i in zip(same, images, strict=True)])
    assert bool((flipped | unchanged).all()) and 0 < int(flipped.sum()) < 64


def test_cutout_blanks_one_clipped_square_per_image() -> None:
    mask = cutout_mask(256, 32, 32, 16, torch.Generator().manual_seed(0))
    assert mask.shape == (256, 1, 32, 32) and mask.dtype == torch.bool
    area = mask.flatten(1).sum(1)
    assert int(area.max()) == 16 * 16 and 0 < int(area.min()) < 16 * 16  # centres near a border are clipped
    rows, cols = mask[:, 0].any(2), mask[:, 0].any(1)
    assert torch.equal(area, rows.sum(1) * cols.sum(1))  # one rectangle each, not scattered pixels
    assert torch.equal(mask, cutout_mask(256, 32, 32, 16, torch.Generator().manual_seed(0)))


def test_loader_cutout_sets_squares_to_the_channel_mean(image_folder: Path) -> None:
    s = load_splits("imagefolder", image_folder, val_size=6)
    plain = BatchLoader(s.train, 16, s.mean, s.std, shuffle=True, augment=True, seed=5)
    cut = BatchLoader(s.train, 16, s.mean, s.std, shuffle=True, augment=True, cutout=8, seed=5)
    (xp, yp), (xc, yc) = next(iter(plain)), next(iter(cut))
    assert torch.equal(yp, yc)  # same order and crops: cutout draws after them
    changed = (xp != xc).any(1)
    assert bool(changed.flatten(1).any(1).all())
    assert bool((xc.permute(0, 2, 3, 1)[changed] == 0).all())


def test_loader_epochs_are_reproducible(image_folder: Path) -> None:
    s = load_splits("imagefolder", image_folder, val_size=6)
    loader = BatchLoader(s.train, 16, s.mean, s.std, shuffle=True, augment=True, seed=5)
    loader.set_epoch(2)
    first = [y for _, y in loader]
    loader.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in loader], strict=True))
    x, _ = next(iter(loader))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 1.0


def test_what_real_folders_hold_besides_images(tmp_path: Path) -> None:
    """Hidden leftovers (macOS ``._x.jpg`` and ``.DS_Store``, ``.ipynb_checkpoints``) are not data; 16-bit grayscale
    keeps its contrast; a symlinked class folder's changes reach the cache; names that are not UTF-8 hash."""
    import os

    from rlprune.data.cache import source_fingerprint

    folder = make_image_folder(tmp_path / "d", 4, 2)
    (folder / "train" / "circle" / "._0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "train" / ".ipynb_checkpoints").mkdir()
    (folder / "test" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    plain = load_splits("imagefolder", folder, val_size=3)
    assert len(plain.train) + len(plain.val) == 4 * len(CLASSES) and plain.classes == sorted(CLASSES)
    # 16-bit grayscale (microscopy, depth): a mid-grey of 30000 / 65535 stays mid-grey, not clipped to white
    deep = make_image_folder(tmp_path / "deep", 3, 2)
    for p in deep.rglob("*.png"):
        Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(p)
    grey = load_splits("imagefolder", deep, val_size=2, channels=1)
    assert int(grey.train.images.float().mean().round()) == round(30000 / 257)
    # a class folder that is a symlink: adding an image to its target is a new source, not a cache hit
    outside = tmp_path / "outside"
    (folder / "train" / "square").rename(outside)
    (folder / "train" / "square").symlink_to(outside, target_is_directory=True)
    before = source_fingerprint(folder)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(outside / "9999.png")
    assert source_fingerprint(folder) != before
    linked = load_splits("imagefolder", folder, val_size=3)
    assert len(linked.train) + len(linked.val) == 4 * len(CLASSES) + 1
    odd = folder / "test" / os.fsdecode(b"caf\xe9.txt")  # not an image, not UTF-8: skipped, and still hashed
    odd.write_bytes(b"notes")
    assert source_fingerprint(folder) != source_fingerprint(folder / "train")


def test_splits_rebuilt_for_a_checkpoint_are_the_ones_it_trained_with(tmp_path: Path) -> None:
    """A checkpoint records which images its validation split holds and how it normalized: rebuilding the splits
    from changed data is refused (it could validate on trained images), and the recorded normalization is used."""
    from rlprune.data import splits_from_meta

    folder = make_image_folder(tmp_path / "d", 6, 2)
    splits = load_splits("imagefolder", folder, val_size=4, limit_train=10)
    meta = {
        "dataset": {
            "name": "imagefolder",
            "root": str(folder),
            "val_size": 4,
            "split_seed": 0,
            "split_sha256": splits.info["split_sha256"],
        },
        "mean": list(splits.mean),
        "std": list(splits.std),
    }
    again = splits_from_meta(meta)
    assert torch.equal(again.val.images, splits.val.images)
    assert again.mean == splits.mean and again.std == splits.std  # the 10-image run's, not the full split's
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "train" / "circle" / "9999.png")
    with pytest.raises(RLPruneError, match="not the one the checkpoint was trained with"):
        splits_from_meta(meta)
    # a hold-out that would take a class's every image is refused, naming it
    with pytest.raises(RLPruneError, match="no training image"):
        stratified_split(torch.tensor([0, 0, 0, 0, 1]), 3, seed=0, hold_out=True)
    kept, _ = stratified_split(torch.tensor([0, 0, 0, 0, 1]), 3, seed=0)  # a subset drawn to keep: allowed
    assert len(kept) == 2
