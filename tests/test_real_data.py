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
from rlprune.cost.budget import uniform_plan
from rlprune.data import default_data_dirs, file_sha256
from rlprune.evaluation.proxy import proxy_from_checkpoint

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
    # the ResNets are baselines; VGG-11/2, MobileNetV2/2 and the ViT are short transfer targets (zoo/README.md)
    floor = 80 if meta["model"].startswith("resnet") else 50
    assert meta["val_accuracy"] > floor and meta["dataset"]["val_size"] == 5000


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


def _numbers(node: object) -> list[float]:
    if isinstance(node, dict):
        return [x for v in node.values() for x in _numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in _numbers(v)]
    return [float(node)] if isinstance(node, int | float) and not isinstance(node, bool) else []


def test_run_the_main_job_on_real_cifar10(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``rlprune run`` itself on the real copy and the zoo ResNet-20, bounded: 3 PPO episodes scored on 256
    validation images, then 20 fine-tune steps (a fraction of an epoch); the outputs must be complete and right."""
    import math

    import numpy as np
    import onnxruntime as ort
    import yaml

    from rlprune.cost.macs import predict_costs
    from rlprune.io.checkpoint import load_checkpoint
    from rlprune.jobs.apply import load_dense
    from rlprune.pruning import Plan

    target, tolerance = 0.5, 0.01
    cfg = tmp_path / "main.yaml"
    body = {
        "name": "main",
        "checkpoint": str(ZOO),
        "output_dir": str(tmp_path / "runs"),
        "env": {"target": target, "tolerance": tolerance},
        "proxy": {"val_images": 256, "recal_batches": 4, "recal_batch_size": 64, "finetune_steps": 2},
        "agent": {"episodes": 3, "hyperparams": {"n_steps": 40, "batch_size": 20}},
        "finetune": {"epochs": 1, "batch_size": 64, "steps_per_epoch": 20},
    }
    cfg.write_text(yaml.safe_dump(body))
    capsys.readouterr()
    assert main(["run", str(cfg), "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    run = tmp_path / "runs" / "main"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] == 3 and len((run / "episodes.jsonl").read_text().splitlines()) == 3
    plan = Plan.load(run / "best_plan.json")
    report = json.loads((run / "pruned" / "report.json").read_text())
    assert all(math.isfinite(x) for x in _numbers(report)), "a number in report.json is not finite"
    # the MACs budget, met exactly on the real pruned model, as predicted from the plan
    _, _, structure = load_dense(str(ZOO))
    ratio = report["pruned"]["macs"] / report["dense"]["macs"]
    assert predict_costs(structure, plan.channels)[0] == report["pruned"]["macs"]
    assert target - tolerance <= ratio <= target and first["macs_ratio"] == round(ratio, 4)
    assert report["provenance"]["request"]["steps_per_epoch"] == 20
    # the dense model scores what the zoo records; the pruned one learned something real in 20 steps
    meta = json.loads(ZOO.read_text())
    assert report["dense"]["test"] == pytest.approx(meta["test_accuracy"], abs=0.1)
    after = report["pruned"]["after_finetune"]
    assert after["test"] > 3 * 10  # well above chance (10 classes)
    # the exported model and its ONNX twin agree on real images
    model, _ = load_checkpoint(run / "pruned" / "model.json")
    session = ort.InferenceSession(str(run / "pruned" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = np.abs(session.run(None, {"input": x.numpy()})[0] - model.eval()(x).numpy()).max()
    assert diff < 1e-4 and report["onnx"]["max_abs_diff"] < 1e-4
