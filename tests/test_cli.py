from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rlprune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, data_root: Path, **train: object) -> Path:
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "imagefolder", "root": str(data_root), "val_size": 6, "batch_size": 16},
        "model": {"name": "resnet20", "kwargs": {"width": 4}},
        "train": {"epochs": 1, "warmup_epochs": 0, **train},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_pretrain_then_evaluate(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo = tmp_path / "zoo" / "tiny_folder.v2"  # a dot inside the name must survive
    args = ["--set", "train.epochs=2", "--quiet", "--out", str(zoo)]
    assert main(["pretrain", str(_config(tmp_path, image_folder)), *args]) == 0
    run = tmp_path / "runs" / "tiny"
    for name in ("config.yaml", "model.json", "model.safetensors", "history.json", "train.log"):
        assert (run / name).is_file(), name
        published = zoo.parent / f"{zoo.name}.{name.removeprefix('model.')}"
        assert published.is_file(), published  # --out: the zoo layout, e.g. zoo/tiny_folder.config.yaml
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    meta = json.loads((run / "model.json").read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["published"] == f"{zoo}.json"
    assert json.loads(Path(f"{zoo}.json").read_text())["weights_file"] == "tiny_folder.v2.safetensors"
    # The published copy is what gets evaluated: it must load (hash re-pointed) and give the recorded accuracy.
    assert main(["evaluate", "--checkpoint", f"{zoo}.json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == pytest.approx(meta["test_accuracy"], abs=0.01) and out["images"] == 18
    assert main(["evaluate", "--checkpoint", str(run / "model"), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(meta["val_accuracy"], abs=0.01)


def test_warm_start_from_checkpoint(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    assert main(["pretrain", str(_config(tmp_path, image_folder)), "--quiet"]) == 0
    first = tmp_path / "runs" / "tiny" / "model"
    # A near-zero learning rate keeps the weights where the warm start put them: they must be the first run's.
    cfg = _config(tmp_path, image_folder, lr=1e-12, weight_decay=0.0)
    args = ["--set", "name=second", "--set", f"init_from={first}", "--quiet"]
    assert main(["pretrain", str(cfg), *args]) == 0
    second = tmp_path / "runs" / "second"
    meta = json.loads((second / "model.json").read_text())
    source = json.loads(first.with_suffix(".json").read_text())
    assert meta["init_from"]["weights_sha256"] == source["weights_sha256"]
    before, after = load_file(first.with_suffix(".safetensors")), load_file(second / "model.safetensors")
    assert torch.allclose(before["conv1.weight"], after["conv1.weight"], atol=1e-6)
    # Weights of another width do not fit: a one-line error and no run directory.
    capsys.readouterr()
    code = main(
        ["pretrain", str(cfg), "--set", "name=third", "--set", f"init_from={first}", "--set", "model.kwargs.width=8"]
    )
    _one_line_error(capsys, code, "do not fit the model")
    assert not (tmp_path / "runs" / "third").exists()


def test_warm_start_deepens_a_shallower_resnet(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlprune.io.checkpoint import load_checkpoint

    assert main(["pretrain", str(_config(tmp_path, image_folder)), "--quiet"]) == 0
    first = tmp_path / "runs" / "tiny" / "model"
    cfg = _config(tmp_path, image_folder, lr=1e-12, weight_decay=0.0)
    args = ["--set", "name=deep", "--set", "model.name=resnet32", "--set", f"init_from={first}", "--quiet"]
    assert main(["pretrain", str(cfg), *args]) == 0
    deep, meta = load_checkpoint(tmp_path / "runs" / "deep" / "model")
    assert meta["model"] == "resnet32" and meta["init_from"]["method"] == "deepen"
    assert meta["init_from"]["model"] == "resnet20"
    shallow, source = load_checkpoint(first)
    # The deepened model computes the ResNet-20's function: an lr of 1e-12 leaves the weights where they started
    # (the epoch did move the BN running statistics, so compare with batch statistics).
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(deep.train()(x), shallow.train()(x), atol=1e-5)
    assert meta["init_from"]["weights_sha256"] == source["weights_sha256"]
    # Deepening goes one way: a ResNet-32 does not shrink into a ResNet-20, and nothing is written.
    capsys.readouterr()
    deep_ckpt = tmp_path / "runs" / "deep" / "model"
    code = main(["pretrain", str(cfg), "--set", "name=back", "--set", f"init_from={deep_ckpt}", "--quiet"])
    _one_line_error(capsys, code, "resnet32 -> resnet20", "cannot deepen")
    assert not (tmp_path / "runs" / "back").exists()


def test_misspelled_key(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", str(_config(tmp_path, image_folder, epoch=3))])
    _one_line_error(capsys, code, "unknown key 'train.epoch'", "did you mean 'epochs'")
    assert not (tmp_path / "runs").exists()


def test_missing_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", str(_config(tmp_path, tmp_path / "missing"))])
    _one_line_error(capsys, code, "data.root", "does not exist")
    assert not (tmp_path / "runs").exists()


def test_tampered_checkpoint(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", str(_config(tmp_path, image_folder)), "--quiet"]) == 0
    src = tmp_path / "runs" / "tiny"
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    _one_line_error(capsys, main(["evaluate", "--checkpoint", str(copy / "model.json")]), "checksum")


def test_module_entry_point_help() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rlprune", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "pretrain" in out.stdout and "evaluate" in out.stdout
