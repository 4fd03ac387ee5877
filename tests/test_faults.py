"""Faults around a search's records and data (issue 18, cases 11 and 13): a torn line in the middle of
``episodes.jsonl`` loses no later record and is never rewritten away, a resumed search draws new plans, and an added
empty class folder is seen through the decoded-data cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import pretrain_tiny

from rlprune.cli import main
from rlprune.data import load_splits
from rlprune.errors import RLPruneError
from rlprune.searching.recorder import SearchRecorder


@pytest.fixture(scope="module")
def searched(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("faults")
    checkpoint = pretrain_tiny(image_folder, tmp, width=4, val_size=6, name="dense")
    search = tmp / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "checkpoint": str(checkpoint),
                "output_dir": str(tmp / "runs"),
                "proxy": {"recal_batches": 1, "recal_batch_size": 8, "finetune_steps": 0, "val_images": 6},
                # n_steps far above 3 episodes: no PPO update happens, as in a search killed before its first update
                "agent": {"episodes": 3, "checkpoint_every": 0, "hyperparams": {"n_steps": 512, "batch_size": 64}},
            }
        )
    )
    assert main(["train", str(search), "--quiet"]) == 0
    return {"tmp": tmp, "config": search, "run": tmp / "runs" / "s"}


def _copy_run(searched: dict[str, Path], name: str) -> tuple[Path, Path]:
    run = searched["tmp"] / "runs" / name
    shutil.copytree(searched["run"], run)
    cfg = searched["tmp"] / f"{name}.yaml"
    body = yaml.safe_load(searched["config"].read_text())
    cfg.write_text(yaml.safe_dump({**body, "name": name}))
    return run, cfg


def test_a_torn_line_in_the_middle_loses_no_later_record(searched: dict[str, Path]) -> None:
    run, cfg = _copy_run(searched, "torn")
    path = run / "episodes.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    torn = lines[1][: len(lines[1]) // 2]
    path.write_text("\n".join([lines[0], torn, lines[2]]))  # and no final newline: a crash mid-append
    recorder = SearchRecorder(run)
    assert recorder.episodes == 2 and recorder.skipped == [2]
    assert [r["episode"] for r in recorder.records] == [1, 3]
    assert path.read_text() == "\n".join([lines[0], torn, lines[2]]) + "\n"  # only a newline appended
    # resume to 5 valid records: every line that was there stays, byte for byte, and 3 are added
    assert main(["train", str(cfg), "--resume", "--set", "agent.episodes=5", "--quiet"]) == 0
    after = path.read_text().splitlines()
    assert after[:3] == [lines[0], torn, lines[2]] and len(after) == 6
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] == 5 == SearchRecorder(run).episodes


def test_a_resume_before_the_first_update_draws_new_plans(searched: dict[str, Path]) -> None:
    run, cfg = _copy_run(searched, "early")
    (run / "agent_state.pt").unlink()  # killed before any agent checkpoint: the agent restarts from scratch
    first = [json.loads(line)["ratios"] for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert main(["train", str(cfg), "--resume", "--set", "agent.episodes=6", "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["ratios"] for r in records[:3]] == first
    assert all(r["ratios"] != f for r in records[3:] for f in first), "the resumed agent replayed recorded plans"


def test_an_added_empty_class_folder_is_seen_through_the_cache(image_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    shutil.copytree(image_folder, data)
    assert load_splits("imagefolder", data, val_size=6).classes == ["circle", "square", "stripes"]  # now cached
    (data / "train" / "triangle").mkdir()
    (data / "test" / "triangle").mkdir()
    with pytest.raises(RLPruneError, match="'train/triangle' holds no images"):
        load_splits("imagefolder", data, val_size=6)


def test_a_resume_keeps_the_agent_seed_and_weights_it_began_with(
    searched: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Records made by one agent, seed or set of weights are not continued by another: the run would mix plans no
    single configuration made (and an agent's saved state would not fit another algorithm)."""
    run, cfg = _copy_run(searched, "same")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for args, said in (
        (["train", str(cfg), "--set", "seed=1"], "another config (seed: 0 -> 1)"),
        (["train", str(cfg), "--set", "agent.algorithm=sac"], "another config (agent.algorithm: 'ppo' -> 'sac')"),
        (["train", str(cfg), "--set", "agent.hyperparams.n_steps=256"], "(agent.hyperparams.n_steps: "),
        (["search", str(cfg), "--agent", "random", "--set", "name=same"], "(searcher: 'ppo' -> 'random')"),
    ):
        capsys.readouterr()
        assert main([*args, "--resume", "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert said in err and "--set name=" in err and len(err.strip().splitlines()) == 1, err
    identity = json.loads((run / "search.json").read_text())
    assert identity["searcher"] == "ppo" and len(identity["weights_sha256"]) == 1
    # the checkpoint file replaced by other weights under the same path
    (run / "search.json").write_text(json.dumps({**identity, "weights_sha256": ["0" * 64]}))
    assert main(["train", str(cfg), "--resume", "--quiet"]) == 2
    assert "another agent or searcher, checkpoint weights or scoring (weights_sha256" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "search.json"} == {
        k: v for k, v in before.items() if k != "search.json"
    }  # nothing rewritten by a refused resume
