"""Decoding image sources into uint8 arrays: image folders (a directory or a ``.tar.gz`` of one) and the official
CIFAR python-format batches (read with a restricted unpickler)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from rlprune.errors import RLPruneError
from rlprune.io.safe import clip

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "test")
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # one image file inside an archive

# A decoded split: images (N, C, H, W) uint8, labels (N,) int64.
Split = tuple[np.ndarray, np.ndarray]


def _to_array(data: bytes | Path, size: int, channels: int, name: str) -> np.ndarray:
    """Decode one image, convert to RGB/grayscale, resize its shorter side and center-crop to ``size``."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img = _eight_bit(img)
            img = img.convert("RGB" if channels == 3 else "L")
            if img.size != (size, size):
                w, h = img.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
                left, top = (nw - size) // 2, (nh - size) // 2
                img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise RLPruneError(f"{name[:200]}: cannot decode image ({clip(str(exc), 80)})") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float grayscale (``I;16``, ``I``, ``F``: microscopy, depth, medical scans) as
    8-bit: Pillow's own conversion clips every value above 255, which turns such an image almost entirely white."""
    if not (img.mode in ("I", "F") or img.mode.startswith("I;16")):
        return img
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0  # floats in [0, 1]
    elif img.mode != "F" and lo >= 0.0 and hi <= 65535.0:
        arr = arr / 257.0  # by the mode, not the image: every 16-bit image of a dataset scaled alike
    else:  # floats beyond [0, 1], integers beyond 16 bits: this image's own range
        arr = (arr - lo) * 255.0 / max(hi - lo, 1e-12)
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), mode="L")


def _hidden(name: str) -> bool:
    """Names starting with a dot: macOS ``._img.jpg`` / ``.DS_Store``, ``.ipynb_checkpoints``; never data."""
    return name.startswith(".")


def _collect(entries: dict[str, dict[str, list[str]]], origin: str) -> list[str]:
    """Check an image-folder listing (split -> class -> files) and return the shared, sorted class list."""
    for split in SPLITS:
        if not entries.get(split):
            raise RLPruneError(f"{origin}: no '{split}/<class>/<image>' folders found (expected train/ and test/)")
        for cls, files in entries[split].items():
            if not files:
                raise RLPruneError(f"{origin}: class folder '{split}/{cls}' holds no images")
    train_classes, test_classes = sorted(entries["train"]), sorted(entries["test"])
    if train_classes != test_classes:
        diff = sorted(set(train_classes) ^ set(test_classes))
        raise RLPruneError(f"{origin}: train and test class folders differ (only in one of them: {', '.join(diff)})")
    return train_classes


def _decode_all(
    entries: dict[str, dict[str, list[str]]],
    classes: list[str],
    read: dict[str, bytes] | Path,
    size: int,
    channels: int,
    origin: str,
) -> dict[str, Split]:
    out: dict[str, Split] = {}
    total = sum(len(f) for split in SPLITS for f in entries[split].values())
    # disable=None: shown on a terminal only (a log or a pipe gets no progress-bar residue)
    with tqdm(total=total, desc=f"decoding {Path(origin).name}", unit="img", leave=False, disable=None) as bar:
        for split in SPLITS:
            images, labels = [], []
            for label, cls in enumerate(classes):
                for rel in sorted(entries[split][cls]):
                    data = read[rel] if isinstance(read, dict) else read / rel
                    images.append(_to_array(data, size, channels, f"{origin}:{rel}"))
                    labels.append(label)
                    bar.update(1)
            out[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return out


def read_image_folder(path: Path, size: int, channels: int) -> tuple[dict[str, Split], list[str]]:
    """Decode ``train/<class>/*`` and ``test/<class>/*`` from a directory or a ``.tar.gz`` / ``.tar`` of one.

    A single top-level folder inside the archive (``cifar10/train/...``) is looked through.
    """
    entries: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    if path.is_dir():
        base = path
        if not (base / "train").is_dir():
            subdirs = [d for d in base.iterdir() if d.is_dir() and (d / "train").is_dir()]
            if len(subdirs) == 1:
                base = subdirs[0]
        for split in SPLITS:
            split_dir = base / split
            if not split_dir.is_dir():
                continue
            for cls_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not _hidden(d.name)):
                entries[split][cls_dir.name] = [
                    f"{split}/{cls_dir.name}/{f.name}"
                    for f in cls_dir.iterdir()
                    if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not _hidden(f.name)
                ]
        classes = _collect(entries, str(path))
        return _decode_all(entries, classes, base, size, channels, str(path)), classes
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                # Accept split/class/file or top/split/class/file.
                if any(_hidden(p) for p in parts[-3:]):
                    continue
                if len(parts) >= 3 and parts[-3] in SPLITS:
                    split, cls, fname = parts[-3], parts[-2], parts[-1]
                    if member.isdir():
                        continue
                    entries[split].setdefault(cls, [])
                    if member.isfile() and PurePosixPath(fname).suffix.lower() in IMAGE_SUFFIXES:
                        rel = f"{split}/{cls}/{fname}"
                        if member.size > MAX_IMAGE_BYTES:  # a compression bomb is refused before it is inflated
                            raise RLPruneError(f"{path}: member '{member.name[:80]}' is {member.size} bytes")
                        fobj = tar.extractfile(member)
                        if fobj is not None:
                            blobs[rel] = fobj.read()
                            entries[split][cls].append(rel)
                elif len(parts) >= 2 and parts[-2] in SPLITS and member.isdir():
                    entries[parts[-2]].setdefault(parts[-1], [])
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise RLPruneError(f"{path}: not a readable tar archive ({clip(str(exc), 80)})") from exc
    classes = _collect(entries, str(path))
    return _decode_all(entries, classes, blobs, size, channels, str(path)), classes


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR python-format batches: only numpy arrays and plain containers may be rebuilt.

    Any other global (``os.system``, ``builtins.eval``, ...) raises instead of executing: a batch file received from
    someone else cannot run code.
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")


def _load_batch(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as exc:
        raise RLPruneError(f"{path}: missing CIFAR batch file") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise RLPruneError(f"{path}: not a valid CIFAR batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise RLPruneError(f"{path}: not a valid CIFAR batch (expected a dict, got {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(path: Path, side: int) -> Split:
    batch = _load_batch(path)
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise RLPruneError(f"{path}: 'data' must be a uint8 array of shape (N, {3 * side * side})")
    if labels is None or len(labels) != data.shape[0]:
        raise RLPruneError(f"{path}: 'labels' missing or of the wrong length")
    return data.reshape(-1, 3, side, side), np.asarray(labels, dtype=np.int64)


def read_cifar_python(path: Path) -> tuple[dict[str, Split], list[str]]:
    """Read the official ``cifar-10-batches-py`` folder (data_batch_1..5, test_batch, batches.meta)."""
    if not path.is_dir():
        raise RLPruneError(f"{path}: expected the 'cifar-10-batches-py' folder")
    meta = _load_batch(path / "batches.meta")
    names = meta.get("label_names")
    if not isinstance(names, list):
        raise RLPruneError(f"{path / 'batches.meta'}: 'label_names' missing")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    parts = [_batch_arrays(path / f"data_batch_{i}", 32) for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _batch_arrays(path / "test_batch", 32)
    for split, (_, labels) in (("train", train), ("test", test)):
        if labels.min() < 0 or labels.max() >= len(classes):
            raise RLPruneError(f"{path}: {split} labels outside 0..{len(classes) - 1}")
    return {"train": train, "test": test}, classes


def walk(path: Path) -> Iterator[Path]:
    """Every file and folder under ``path``, through symlinked folders (each real folder once), hidden names left
    out."""
    seen: set[str] = set()
    for top, dirs, files in os.walk(path, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in dirs + sorted(f for f in files if not _hidden(f)):
            yield Path(top) / name
