"""benchmarks/run_all.py: every headline file of every tier names the command that re-measures it, and a file
counts as current only when the package code that measured it is the code at hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import run_all

from rlprune.io.provenance import source_sha256


@pytest.mark.parametrize("tier", sorted(run_all.TIERS))
def test_every_headline_records_the_command_that_remeasures_it(tier: str) -> None:
    assert "main_job" in run_all.TIERS[tier]  # the main job is re-measured in every tier
    for stem in run_all.TIERS[tier]:
        argv = run_all.recorded_command(stem)
        script = Path(argv[1])
        assert script.parts[0] == "benchmarks" and (run_all.ROOT / script).is_file(), (stem, argv)


def test_a_file_is_current_only_for_the_code_that_measured_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    (tmp_path / "x.json").write_text(json.dumps({"environment": {"source_sha256": source_sha256()}}))
    (tmp_path / "old.json").write_text(json.dumps({"environment": {"commit": "abc"}}))  # before hashes were recorded
    assert run_all.measured_by("x") == source_sha256()
    assert run_all.measured_by("old") is None and run_all.measured_by("absent") is None
    (tmp_path / "x.md").write_text("# t\n\nno command here\n")
    with pytest.raises(SystemExit, match="records no 'Reproduce"):
        run_all.recorded_command("x")
    (tmp_path / "x.md").write_text("Reproduce: `python /tmp/evil.py`.\n")
    with pytest.raises(SystemExit, match="records no 'Reproduce"):
        run_all.recorded_command("x")
    (tmp_path / "x.md").write_text("Reproduce: `python benchmarks/../../evil.py --x 1`.\n")
    with pytest.raises(SystemExit, match="does not run a script of benchmarks/"):
        run_all.recorded_command("x")
