from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import reproduce_command, write_results

from rlprune.reporting.tables import md_table


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


def test_measured_on_names_the_machine_and_the_command() -> None:
    from _results import measured_on

    env = {"threads": 1, "cpu": "AMD EPYC", "torch": "2.13.0+cpu", "commit": "abc1234"}
    line = measured_on(env, "python benchmarks/b.py --seed 0")
    assert (
        line == "1 threads, AMD EPYC, torch 2.13.0+cpu, commit abc1234. Reproduce: `python benchmarks/b.py --seed 0`."
    )


def _cell(model: str, gen: float, uni: float, ratios: dict[str, tuple[float, float, float]]) -> dict:
    """A generalize.py cell whose three plans give each unit the (generalist, uniform, PPO search) ratios, on units
    of 16 channels."""

    def plan(i: int) -> dict:
        return {
            "ratios": {n: r[i] for n, r in ratios.items()},
            "channels": {n: round(16 * (1 - r[i])) for n, r in ratios.items()},
        }

    accuracy = {"generalist": gen, "uniform": uni, "PPO search": 70.0}
    return {
        "model": model,
        "budget": 0.5,
        "rows": {m: {"proxy_val_accuracy": a, "plan": plan(i)} for i, (m, a) in enumerate(accuracy.items())},
    }


def test_losses_table_lists_where_the_generalist_and_the_search_disagree_most() -> None:
    from generalize import _losses_md

    units = {"a": (0.7, 0.3, 0.0), "b": (0.3, 0.3, 0.35), "c": (0.0, 0.3, 0.5), "d": (0.2, 0.3, 0.2)}
    winning = _cell("resnet", 60.0, 50.0, units)
    assert _losses_md([winning]) == []  # nothing to explain where it is ahead of uniform
    md = _losses_md([winning, _cell("mobilenet", 30.0, 40.0, units)], top=2)
    lines = "\n".join(md).splitlines()
    rows = [line for line in lines if line.startswith("| mobilenet")]
    assert not any(line.startswith("| resnet") for line in lines)
    # the largest |generalist - search| gaps first: a (0.7 vs 0.0), then c (0.0 vs 0.5); kept channels, then ratios
    assert rows == [
        "| mobilenet | 0.5 | `a` | 5 | 11 | 16 | 0.7 | 0.3 | 0 |",
        "| mobilenet | 0.5 | `c` | 16 | 11 | 8 | 0 | 0.3 | 0.5 |",
    ]
