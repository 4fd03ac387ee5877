from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_checkpoint, save_checkpoint
from rlprune.models import build_model


def _save(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3)
    sidecar = save_checkpoint(
        tmp_path / "m", model, {"model": "resnet20", "model_kwargs": {"num_classes": 3}, "classes": ["a", "b", "c"]}
    )
    return model, sidecar


def test_round_trip_identical_outputs(tmp_path: Path) -> None:
    model, sidecar = _save(tmp_path)
    for ref in (sidecar, tmp_path / "m", tmp_path / "m.safetensors"):
        loaded, meta = load_checkpoint(ref)
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(model.eval()(x), loaded.eval()(x)) and meta["classes"] == ["a", "b", "c"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    _, sidecar = _save(tmp_path)
    weights = tmp_path / "m.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RLPruneError, match="checksum does not match"):
        load_checkpoint(sidecar)


def test_shape_mismatch_and_bad_sidecar(tmp_path: Path) -> None:
    _, sidecar = _save(tmp_path)
    meta = json.loads(sidecar.read_text())
    meta["model_kwargs"] = {"num_classes": 5}
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(RLPruneError, match=r"'fc\.(weight|bias)' is \(3.*model expects \(5"):
        load_checkpoint(sidecar)
    sidecar.write_text("{broken")
    with pytest.raises(RLPruneError, match="not valid JSON"):
        load_checkpoint(sidecar)
    sidecar.write_text(json.dumps({"model": "resnet20"}))
    with pytest.raises(RLPruneError, match="not an rlprune checkpoint"):
        load_checkpoint(sidecar)
    with pytest.raises(RLPruneError, match="metadata not found"):
        load_checkpoint(tmp_path / "other")
