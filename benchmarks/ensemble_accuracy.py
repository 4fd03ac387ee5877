"""Accuracy of checkpoints alone and as the logit-averaging ensemble that ``distill.teacher: [a, b]`` distils.

    python benchmarks/ensemble_accuracy.py --checkpoint zoo/resnet20_cifar10.swa180 \\
        --checkpoint zoo/resnet20_cifar10.stage3

Uses the exact teacher the engine builds (``rlprune.training.teachers.load_teacher``), so the row "ensemble" is the
teacher's own accuracy, and the data split recorded in the first checkpoint (validation and test).

Writes benchmarks/results/ensemble_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import environment, md_table, measured_on, reproduce_command, write_results

from rlprune.data import splits_from_meta
from rlprune.evaluation import evaluate
from rlprune.io.checkpoint import read_meta
from rlprune.training.teachers import load_teacher

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ensemble_accuracy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="an ensemble member (repeat for each)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    splits = splits_from_meta(read_meta(args.checkpoint[0]))
    members = [(path, [path]) for path in args.checkpoint]
    rows, data = [], {}
    for name, paths in [*members, ("ensemble", args.checkpoint)]:
        model = load_teacher(paths, splits.classes, splits.mean, splits.std).eval()
        scores = {split: evaluate(model, getattr(splits, split), splits.mean, splits.std) for split in ("val", "test")}
        data[name] = {split: s["accuracy"] for split, s in scores.items()}
        rows.append([name, round(data[name]["val"], 2), round(data[name]["test"], 2)])
    env = environment()
    md = "\n".join(
        [
            "# Checkpoints alone and as a logit-averaging ensemble",
            "",
            md_table(["model", "val acc", "test acc"], rows),
            "",
            "Validation: the 5k hold-out from train; test: the 10k test split. "
            + measured_on(env, reproduce_command("benchmarks/ensemble_accuracy.py", args, ROOT)),
        ]
    )
    write_results(args.out, {"checkpoints": args.checkpoint, "accuracy": data, "environment": env}, md)
    print(md)


if __name__ == "__main__":
    main()
