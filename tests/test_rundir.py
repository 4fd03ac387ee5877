"""RunDir: the one run-directory type of searches, fine-tunes, rounds and the benchmarks' cached searches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlprune.errors import RLPruneError
from rlprune.io.rundir import RunDir, first_difference


def test_first_difference_names_the_nested_key():
    saved = {"recipe": {"lr": 0.1, "epochs": 3}, "seed": 0}
    now = {"recipe": {"lr": 0.1, "epochs": 4}, "seed": 0}
    assert first_difference(saved, now) == "recipe.epochs: 3 -> 4"
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "b: None -> 2"


def test_check_same_names_the_first_difference(tmp_path: Path):
    run = RunDir(tmp_path / "run", "search run directory")
    run.check_same({"seed": 0, "env": {"target": 0.5}}, {"seed": 0, "env": {"target": 0.5}}, what="settings")
    with pytest.raises(RLPruneError, match=r"another settings \(env.target: 0.5 -> 0.3\)") as err:
        run.check_same({"seed": 0, "env": {"target": 0.5}}, {"seed": 0, "env": {"target": 0.3}}, what="settings")
    assert err.value.fix == "rename"


def test_safe_reads_and_writes(tmp_path: Path):
    run = RunDir(tmp_path)
    run.write_json("summary.json", {"accuracy": 71.5, "episodes": 3, "latency": float("nan")})
    assert run.read_json("summary.json", "search summary") == {"accuracy": 71.5, "episodes": 3, "latency": None}
    (tmp_path / "summary.json").write_text('{"accuracy": NaN}')  # not JSON: a one-line error naming the file
    with pytest.raises(RLPruneError, match="summary.json"):
        run.read_json("summary.json", "search summary")
    assert run.read_json("absent.json", "anything") is None


def test_stage_keeps_a_resumable_run_of_the_same_request_only(tmp_path: Path):
    run = RunDir(tmp_path / "out", "fine-tune output")
    work = run.stage("request A", resumable="state.pt")
    assert work == tmp_path / ".out.partial" and not run.path.exists()
    (work / "state.pt").write_text("epoch 1")
    assert (run.stage("request A", resumable="state.pt") / "state.pt").is_file()  # resumed
    assert not (run.stage("request B", resumable="state.pt") / "state.pt").exists()  # another request: cleared


def test_publish_renames_into_place_and_drops_resume_files(tmp_path: Path):
    run = RunDir(tmp_path / "out")
    work = run.stage("r", resumable="state.pt")
    (work / "state.pt").write_text("x")
    (work / "report.json").write_text("{}")
    run.publish(work, drop=("state.pt",))
    assert sorted(p.name for p in run.path.iterdir()) == ["report.json"] and not work.exists()
    again = run.stage("r2", resumable="state.pt")
    (again / "report.json").write_text('{"new": 1}')
    with pytest.raises(OSError):
        run.publish(again)  # an existing, non-empty output is replaced only when asked
    run.publish(again, replace=True)
    assert json.loads((run / "report.json").read_text()) == {"new": 1}


def test_set_aside_moves_a_stale_run(tmp_path: Path):
    run = RunDir(tmp_path / "s")
    run.path.mkdir()
    aside = run.set_aside("made by another request")
    assert aside.name.startswith("s.stale-") and aside.is_dir() and not run.path.exists()


def test_one_job_at_a_time(tmp_path: Path):
    run = RunDir(tmp_path / "s", "search run directory")
    with run.lock(), pytest.raises(RLPruneError, match="run directory is in use by pid"), RunDir(run.path).lock():
        pass
