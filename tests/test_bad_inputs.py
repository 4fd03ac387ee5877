"""Hostile and faulty input through the CLI (issue 18): one representative case per class.

Every case must end with a non-zero exit, exactly one line on stderr (``error: ...``, under 300 characters, no
traceback), nothing written where nothing should be, and no code run from a shared file. The cases run the real
``rlprune.cli.main`` in-process on a tiny trained checkpoint and a tiny search run built once for the module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from rlprune.cli import main
from rlprune.io.safe import RunLock

World = dict[str, Path]


def _pretrain(tmp: Path, data: Path) -> Path:
    cfg = tmp / "dense.yaml"
    body = {
        "name": "dense",
        "output_dir": str(tmp / "runs"),
        "data": {"dataset": "imagefolder", "root": str(data), "val_size": 6, "batch_size": 16},
        "model": {"name": "resnet20", "kwargs": {"width": 4}},
        "train": {"epochs": 1, "warmup_epochs": 0},
    }
    cfg.write_text(yaml.safe_dump(body))
    assert main(["pretrain", str(cfg), "--quiet"]) == 0
    return tmp / "runs" / "dense" / "model.json"


def _search_yaml(tmp: Path, name: str, checkpoint: Path, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "checkpoint": str(checkpoint),
        "output_dir": str(tmp / "runs"),
        "proxy": {"recal_batches": 1, "recal_batch_size": 8, "finetune_steps": 1, "val_images": 6},
        "agent": {"episodes": 3, "checkpoint_every": 0, "hyperparams": {"n_steps": 24, "batch_size": 12}},
    }
    for key, value in extra.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return body


@pytest.fixture(scope="module")
def world(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("hostile")
    ckpt = _pretrain(tmp, image_folder)
    cfg = tmp / "policy.yaml"
    cfg.write_text(yaml.safe_dump(_search_yaml(tmp, "policy", ckpt)))
    assert main(["train", str(cfg), "--quiet"]) == 0
    return {"tmp": tmp, "ckpt": ckpt, "run": tmp / "runs" / "policy", "data": image_folder}


# ------------------------------------------------------------------------------------------------ file makers
def _sidecar(world: World, dest: Path, **changes: Any) -> Path:
    """A copy of the trained checkpoint in ``dest`` with sidecar fields changed (``None`` removes a field)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(world["ckpt"].with_suffix(".safetensors"), dest / "model.safetensors")
    meta = json.loads(world["ckpt"].read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (dest / "model.json").write_text(json.dumps(meta))
    return dest / "model.json"


def _raw_sidecar(world: World, dest: Path, text_edit: Callable[[str], str]) -> Path:
    path = _sidecar(world, dest)
    path.write_text(text_edit(path.read_text()))
    return path


def _plan(world: World, dest: Path, edit: Callable[[dict[str, Any]], Any], raw: str | None = None) -> Path:
    plan = json.loads((world["run"] / "best_plan.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "plan.json"
    edited = edit(plan)
    path.write_text(raw if raw is not None else json.dumps(plan if edited is None else edited))
    return path


def _policy(world: World, dest: Path, meta_edit: Callable[[dict[str, Any]], None] | None = None, nan: bool = False):
    dest.mkdir(parents=True, exist_ok=True)
    meta = json.loads((world["run"] / "policy.json").read_text())
    if meta_edit:
        meta_edit(meta)
    (dest / "policy.json").write_text(json.dumps(meta))
    state = load_file(world["run"] / "policy.safetensors")
    if nan:
        first = sorted(state)[0]
        state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, dest / "policy.safetensors")
    return dest


def _config(
    world: World, dest: Path, name: str, text: str | None = None, ckpt: Path | None = None, **extra: Any
) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}.yaml"
    body = _search_yaml(dest, name, ckpt or world["ckpt"], **extra)
    path.write_text(text if text is not None else yaml.safe_dump(body))
    return path


def _bomb(levels: int) -> str:
    """A YAML "billion laughs": ``levels`` lists of nine aliases of the previous one, all inside ``name``."""
    lines = ["name:", '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for i in range(levels - 1):
        lines.append(f"  - &b{i} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = f"b{i}"
    return "\n".join(lines) + "\ncheckpoint: x.json\n"


# ------------------------------------------------------------------------------------------------ the cases
def _finetune(world: World, t: Path, ckpt: Path | None = None, plan: Path | None = None, *more: str) -> list[str]:
    plan = plan or world["run"] / "best_plan.json"
    ckpt = ckpt or world["ckpt"]
    return ["finetune", "--plan", str(plan), "--checkpoint", str(ckpt), "--out", str(t / "out"), "--quiet", *more]


def _apply(world: World, t: Path, policy: Path | None = None, ckpt: Path | None = None, *more: str) -> list[str]:
    policy = policy or world["run"]
    ckpt = ckpt or world["ckpt"]
    return [
        "apply",
        "--policy",
        str(policy),
        "--checkpoint",
        str(ckpt),
        "--target-macs",
        "0.5",
        "--out",
        str(t / "out"),
        "--quiet",
        *more,
    ]


EVIL = {"model": "subprocess:getoutput"}


def _evil(world: World, t: Path) -> Path:
    return _sidecar(world, t / "evil", **EVIL, model_kwargs={"cmd": f"touch {t / 'PWNED'}"})


# Each case: (id, build(world, tmp) -> argv, a substring the error must hold)
CASES: list[tuple[str, Callable[[World, Path], list[str]], str]] = [
    # 1. code named in a shared file is never imported unless trusted
    ("code-evaluate", lambda w, t: ["evaluate", "--checkpoint", str(_evil(w, t))], "--trust-model-code"),
    ("code-finetune", lambda w, t: _finetune(w, t, _evil(w, t)), "subprocess:getoutput"),
    ("code-apply", lambda w, t: _apply(w, t, None, _evil(w, t)), "--trust-model-code"),
    (
        "code-train",
        lambda w, t: ["train", str(_config(w, t, "evil", ckpt=_evil(w, t))), "--quiet"],
        "--trust-model-code",
    ),
    # 2. YAML bombs and deep nesting are refused before validation; messages stay short
    ("yaml-bomb-9", lambda w, t: ["train", str(_config(w, t, "bomb", _bomb(9)))], "expanding aliases"),
    ("yaml-bomb-5", lambda w, t: ["train", str(_config(w, t, "bomb5", _bomb(5)))], "name"),
    ("yaml-deep", lambda w, t: ["train", str(_config(w, t, "deep", "name: " + "[" * 500 + "]" * 500))], "deeper"),
    # 3. non-finite numbers anywhere
    (
        "inf-set",
        lambda w, t: ["train", str(_config(w, t, "inf")), "--set", "proxy.finetune_lr=.inf", "--quiet"],
        "finetune_lr",
    ),
    ("inf-flag", lambda w, t: _finetune(w, t, None, None, "--lr", "inf"), "--lr"),
    (
        "nan-sidecar",
        lambda w, t: [
            "evaluate",
            "--checkpoint",
            str(_raw_sidecar(w, t / "c", lambda s: s.replace('"mean": [', '"mean": [NaN, ', 1))),
        ],
        "NaN",
    ),
    # 4. zero / negative sizes
    ("batch-0", lambda w, t: ["evaluate", "--checkpoint", str(w["ckpt"]), "--batch-size", "0"], "--batch-size"),
    ("batch-neg", lambda w, t: _finetune(w, t, None, None, "--batch-size", "-3"), "--batch-size"),
    # 5. saved plans are validated
    (
        "plan-neg-channels",
        lambda w, t: _finetune(
            w, t, None, _plan(w, t, lambda p: p["channels"].update({next(iter(p["channels"])): -4}))
        ),
        "channels",
    ),
    ("plan-nan", lambda w, t: _finetune(w, t, None, _plan(w, t, lambda p: None, raw='{"ratios": [NaN]}')), "NaN"),
    (
        "plan-999",
        lambda w, t: _finetune(
            w, t, None, _plan(w, t, lambda p: p["channels"].update({next(iter(p["channels"])): 999}))
        ),
        "999",
    ),
    # 6. sidecars are validated; a missing checksum is refused
    (
        "sidecar-kwargs-list",
        lambda w, t: ["evaluate", "--checkpoint", str(_sidecar(w, t / "c", model_kwargs=[1, 2]))],
        "model_kwargs",
    ),
    ("sidecar-mean-2", lambda w, t: ["evaluate", "--checkpoint", str(_sidecar(w, t / "c", mean=[0.5, 0.5]))], "mean"),
    (
        "sidecar-std-0",
        lambda w, t: ["evaluate", "--checkpoint", str(_sidecar(w, t / "c", std=[0.0, 0.0, 0.0]))],
        "std",
    ),
    (
        "sidecar-no-sha",
        lambda w, t: ["evaluate", "--checkpoint", str(_sidecar(w, t / "c", weights_sha256=None))],
        "weights_sha256",
    ),
    (
        "sidecar-huge-width",
        lambda w, t: ["evaluate", "--checkpoint", str(_sidecar(w, t / "c", model_kwargs={"width": 10**6}))],
        "model_kwargs",
    ),
    # 7. a checkpoint's classes must be the data's, at every entry point
    (
        "classes-evaluate",
        lambda w, t: ["evaluate", "--checkpoint", str(_sidecar(w, t / "c", classes=["x", "y", "z"]))],
        "classes",
    ),
    ("classes-finetune", lambda w, t: _finetune(w, t, _sidecar(w, t / "c", classes=["x", "y", "z"])), "classes"),
    ("classes-apply", lambda w, t: _apply(w, t, None, _sidecar(w, t / "c", classes=["x", "y", "z"])), "classes"),
    (
        "classes-train",
        lambda w, t: [
            "train",
            str(_config(w, t, "cls", ckpt=_sidecar(w, t / "c", classes=["x", "y", "z"]))),
            "--quiet",
        ],
        "classes",
    ),
    # 8. policy JSON
    (
        "policy-kwargs",
        lambda w, t: _apply(w, t, _policy(w, t / "p", lambda m: m["policy_kwargs"].update(bogus=1))),
        "bogus",
    ),
    ("policy-max-ratio", lambda w, t: _apply(w, t, _policy(w, t / "p", lambda m: m.update(max_ratio="abc"))), "max"),
    ("policy-round-to", lambda w, t: _apply(w, t, _policy(w, t / "p", lambda m: m.update(round_to="x"))), "round_to"),
    ("policy-nan-weights", lambda w, t: _apply(w, t, _policy(w, t / "p", nan=True)), "non-finite"),
    (
        "policy-size",
        lambda w, t: _apply(w, t, _policy(w, t / "p", lambda m: m["policy_kwargs"].update(net_arch=[7, 7]))),
        "do not fit",
    ),
    # 3. a diverging fine-tune stops at the epoch, with its lr, and leaves no resumable NaN state
    ("lr-diverges", lambda w, t: _finetune(w, t, None, None, "--lr", "1e30", "--batch-size", "16"), "epoch 1"),
    # 9. --out is a file
    ("out-file", lambda w, t: [*_finetune(w, t)[:5], "--out", str(_touch(t / "afile")), "--quiet"], "--out"),
    # 13. an unreachable target is refused before the run directory exists
    (
        "unreachable",
        lambda w, t: ["train", str(_config(w, t, "far", env={"target": 0.02, "max_ratio": 0.2})), "--quiet"],
        "unreachable",
    ),
]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("keep me\n")
    return path


def _one_line_failure(capsys: pytest.CaptureFixture[str], code: int, needle: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code != 0, captured.out
    assert err.startswith("error: ") and "\n" not in err, err
    assert len(err) < 300, f"{len(err)} characters: {err[:400]}"
    assert "Traceback" not in err and needle in err, err
    return err


@pytest.mark.parametrize(("case", "build", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    build: Callable[[World, Path], list[str]],
    needle: str,
) -> None:
    argv = build(world, tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    records = (world["run"] / "episodes.jsonl").read_bytes()
    capsys.readouterr()
    _one_line_failure(capsys, main(argv), needle)
    after = {p for p in tmp_path.rglob("*")}
    # nothing written: no output, no run directory, no partial folder, no lock file; only the output_dir of a
    # refused search may have been created (empty)
    new = sorted(str(p.relative_to(tmp_path)) for p in after - before)
    assert new in ([], ["runs"]), new
    assert not (tmp_path / "PWNED").exists(), "a command named in a sidecar ran"
    if (tmp_path / "afile").exists():
        assert (tmp_path / "afile").read_text() == "keep me\n"
    assert (world["run"] / "episodes.jsonl").read_bytes() == records  # the shared run is untouched


def test_trusted_model_code_is_imported(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side of the trust rule: a zoo name needs no trust, and a module prefix the user lists is trusted."""
    from rlprune.errors import RLPruneError
    from rlprune.io.checkpoint import load_checkpoint
    from rlprune.io.trust import UntrustedCodeError

    load_checkpoint(world["ckpt"])  # a zoo name
    net = _sidecar(world, tmp_path / "u", model="netlib:flat_linear", model_kwargs={})
    with pytest.raises(UntrustedCodeError, match="trust_model_code=True"):
        load_checkpoint(net)
    monkeypatch.setenv("RLPRUNE_TRUSTED_MODULES", "netlib")
    with pytest.raises(RLPruneError, match="do not fit"):  # imported (trusted), then refused: other weights
        load_checkpoint(net)
    monkeypatch.setenv("RLPRUNE_TRUSTED_MODULES", "netlibx,other")  # a prefix is a module path, not a string
    with pytest.raises(UntrustedCodeError):
        load_checkpoint(net)


def test_a_second_run_into_a_locked_directory_is_refused(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two fine-tunes into one --out, or two searches into one run directory: the second gets one line naming the
    pid that holds the lock, and the first's files are left alone."""
    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "live").write_text("the other run's\n")
    with RunLock(out, "fine-tune output"):
        code = main(_finetune(world, tmp_path))
        _one_line_failure(capsys, code, "in use by pid")
    assert (partial / "live").read_text() == "the other run's\n"
    cfg = _config(world, tmp_path, "twice")
    with RunLock(tmp_path / "runs" / "twice", "search run directory"):
        _one_line_failure(capsys, main(["train", str(cfg), "--quiet"]), "in use by pid")
    assert not (tmp_path / "runs" / "twice").exists()


def test_disk_full_is_one_line_and_leaves_no_half_file(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from safetensors (its own error type) and from a plain write: one line, no partial file."""
    import errno

    from safetensors import SafetensorError

    import rlprune.io.checkpoint as checkpoint
    import rlprune.io.files as config
    from rlprune.errors import RLPruneError
    from rlprune.io.checkpoint import save_checkpoint
    from rlprune.io.files import atomic_write_text

    model = torch.nn.Linear(2, 2)

    def full_safetensors(*args: Any, **kwargs: Any) -> None:
        Path(args[1]).write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })")

    monkeypatch.setattr(checkpoint, "save_file", full_safetensors)
    with pytest.raises(RLPruneError, match="no space left"):
        save_checkpoint(tmp_path / "m", model, {"model": "x"})
    assert list(tmp_path.iterdir()) == []

    real_fdopen = config.os.fdopen

    class FullFile:
        def __init__(self, fd: int, mode: str) -> None:
            self.f = real_fdopen(fd, mode)

        def __enter__(self) -> FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(config.os, "fdopen", FullFile)
    (tmp_path / "keep.json").write_text("old\n")
    with pytest.raises(RLPruneError, match="no space left"):
        atomic_write_text(tmp_path / "keep.json", "new\n")
    assert (tmp_path / "keep.json").read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["keep.json"]
    # through the CLI: one line
    cfg = _config(world, tmp_path, "full")
    capsys.readouterr()
    _one_line_failure(capsys, main(["train", str(cfg), "--quiet"]), "no space left")
