"""Checks on the real CIFAR-10 copy and the committed zoo checkpoints.

Skipped where either is absent, except under ``RLPRUNE_REQUIRE_DATA=1`` (set by ``.ci/run``), where a skip fails the
run and every committed zoo checkpoint must have been evaluated (tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlprune.cli import main
from rlprune.data import default_data_dirs, file_sha256
from rlprune.evaluation.proxy import proxy_from_checkpoint
from rlprune.pruning.budget import uniform_plan

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "zoo" / "resnet20_cifar10.json"


def _checkpoints_by_weights(folder: Path) -> dict[str, list[Path]]:
    """Every committed checkpoint (a sidecar beside its weights; the logs beside them are JSON too), grouped by the
    sha256 of the weights file itself: the zoo model is also kept under its run's own name."""
    groups: dict[str, list[Path]] = {}
    for sidecar in sorted(folder.glob("*.json")):
        weights = sidecar.with_suffix(".safetensors")
        if weights.is_file():
            groups.setdefault(file_sha256(weights), []).append(sidecar)
    return groups


GROUPS = _checkpoints_by_weights(ROOT / "zoo")
CHECKPOINTS = [paths[0] for paths in GROUPS.values()]  # one evaluation per weights file
HAVE_DATA = any((d / "cifar10-jpeg.tar.gz").is_file() for d in default_data_dirs())
pytestmark = pytest.mark.skipif(
    not (HAVE_DATA and ZOO.is_file()), reason="needs the CIFAR-10 copy ($RLPRUNE_DATA) and zoo/"
)


@pytest.fixture(autouse=True)
def _shared_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLPRUNE_CACHE", raising=False)  # decode the 60k images once per machine, not per test


@pytest.mark.parametrize("checkpoint", CHECKPOINTS, ids=lambda p: p.stem)
def test_zoo_checkpoint_reproduces_its_test_accuracy(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads(checkpoint.read_text())
    assert main(["evaluate", "--checkpoint", str(checkpoint)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 10_000
    assert out["accuracy"] == pytest.approx(meta["test_accuracy"], abs=0.1)
    assert meta["val_accuracy"] > 80 and meta["dataset"]["val_size"] == 5000


def test_copies_of_one_checkpoint_record_the_same_accuracy() -> None:
    for paths in GROUPS.values():
        recorded = {(m["val_accuracy"], m["test_accuracy"]) for m in (json.loads(p.read_text()) for p in paths)}
        assert len(recorded) == 1, paths


def test_bn_recalibration_recovers_accuracy_on_real_data() -> None:
    torch.manual_seed(0)
    raw = proxy_from_checkpoint(str(ZOO), recal_batches=0, val_images=1000)
    recal = proxy_from_checkpoint(str(ZOO), recal_batches=20, val_images=1000)
    plan = uniform_plan(raw.structure, 0.5)
    a, b = raw(plan), recal(plan)
    assert b.accuracy > a.accuracy + 5  # pruned BN statistics are stale; recalibration fixes most of the damage
    assert 0.49 <= b.macs_ratio <= 0.5
