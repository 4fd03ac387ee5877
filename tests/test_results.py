from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import reproduce_command, write_results

from rlprune.reporting import md_table


def test_reproduce_command_spells_out_every_option(tmp_path: Path) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", default=[])
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--checkpoint", default=str(tmp_path / "zoo" / "r20.json"))
    ap.add_argument("--out", default=str(tmp_path / "results"))
    args = ap.parse_args(["--target", f"r32={tmp_path}/zoo/r32.json", "--target", "odd=my dir/x.json", "--fast"])
    line = reproduce_command("benchmarks/b.py", args, tmp_path)
    assert line == (
        "python benchmarks/b.py --target r32=zoo/r32.json --target 'odd=my dir/x.json' --macs 0.5 --fast "
        "--checkpoint zoo/r20.json"
    )  # defaults included, None / False / --out left out, paths relative to the root, shell-quoted


def test_results_are_written_as_json_and_markdown(tmp_path: Path) -> None:
    md = md_table(["plan", "acc"], [["ppo", 72.5512], ["uniform", 61.8]])
    assert md.splitlines()[:2] == ["| plan | acc |", "|---|---|"] and "| ppo | 72.55 |" in md
    js, mdp = write_results(tmp_path / "bench", {"rows": 2}, md)
    data = json.loads(js.read_text())
    assert data["rows"] == 2 and "torch" in data["environment"] and mdp.read_text() == md + "\n"
