"""Shared fixtures: a small generated image-folder dataset and an isolated dataset cache.

With ``RLPRUNE_REQUIRE_DATA=1`` (set by ``.ci/run``) no test may skip: a skip (the CIFAR-10 copy or the zoo
missing) is reported as a failure, and the run fails unless every committed zoo checkpoint was evaluated.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "square", "stripes")
# the benchmarks' result helpers (benchmarks/_results.py), tested here like the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


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


REQUIRE_DATA = os.environ.get("RLPRUNE_REQUIRE_DATA", "0") == "1"
ZOO = Path(__file__).resolve().parents[1] / "zoo"
ZOO_TEST = "test_real_data.py::test_zoo_checkpoint_reproduces_its_test_accuracy["
_zoo_passed: list[str] = []
_collected: list[str] = []
_deselected: list[str] = []


def zoo_weight_files() -> dict[str, list[Path]]:
    """Committed zoo checkpoints grouped by the sha256 of their weights (copies of one model count once)."""
    groups: dict[str, list[Path]] = {}
    for weights in sorted(ZOO.glob("*.safetensors")):
        if weights.with_suffix(".json").is_file():
            groups.setdefault(hashlib.sha256(weights.read_bytes()).hexdigest(), []).append(weights.with_suffix(".json"))
    return groups


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_DATA and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under RLPRUNE_REQUIRE_DATA=1, where every test must run: {reason}"
    if report.when == "call" and report.passed and ZOO_TEST in item.nodeid:
        _zoo_passed.append(item.nodeid)


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.extend(item.nodeid for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    _collected.extend(item.nodeid for item in session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under RLPRUNE_REQUIRE_DATA=1, a run that includes the zoo evaluations must have evaluated one zoo checkpoint
    per committed weights file (at least ResNet-20/32/56), and says how many it evaluated."""
    if not REQUIRE_DATA or _deselected or not any(ZOO_TEST.rstrip("[") in nodeid for nodeid in _collected):
        return  # (a run without the zoo evaluations, or that leaves tests out with -k / -m, is not counted)
    expected = len(zoo_weight_files())
    if expected >= 3 and len(_zoo_passed) == expected:
        _summary.append(f"RLPRUNE_REQUIRE_DATA=1: all {expected} zoo checkpoints evaluated")
        return
    _summary.append(
        f"RLPRUNE_REQUIRE_DATA=1: {len(_zoo_passed)} zoo checkpoints evaluated, expected {expected} "
        "(one per committed weights file in zoo/, at least ResNet-20/32/56)"
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


_summary: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _summary:
        terminalreporter.write_line(line, red="expected" in line, green="expected" not in line)


def pretrain_tiny(image_folder: Path, out: Path, *, width: int = 4, val_size: int = 12, name: str = "tiny") -> Path:
    """Train a tiny ResNet-20 on the generated images for one epoch with ``rlprune pretrain``; returns its checkpoint
    (``out/runs/<name>/model.json``) — the dense model the CLI search and fault tests start from."""
    import yaml

    from rlprune.cli import main

    cfg = out / f"{name}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "output_dir": str(out / "runs"),
                "data": {"dataset": "imagefolder", "root": str(image_folder), "val_size": val_size, "batch_size": 16},
                "model": {"name": "resnet20", "kwargs": {"width": width}},
                "train": {"epochs": 1, "warmup_epochs": 0},
            }
        )
    )
    assert main(["pretrain", str(cfg), "--quiet"]) == 0
    return out / "runs" / name / "model.json"
