"""Training throughput of zoo models through the engine itself (``rlprune.training.engine.fit``), per batch size.

Plans a pretraining run before spending machine time on it: seconds per CIFAR-10 epoch (45k images) of ResNet-20 vs
ResNet-56 at batch 128 vs 512, with the engine's AMP / channels-last / cuDNN choices on the device at hand. Each
point trains ``--epochs`` epochs on the first ``--images`` training images (real data, Cutout on) and times the last
epoch; with ``--teachers k`` the step also runs k ResNet-20 teachers (distillation from an ensemble).

    python benchmarks/train_throughput.py --model resnet20 --model resnet56 --batch-size 128 --batch-size 512

Writes benchmarks/results/train_throughput.{json,md} (``--out`` to change).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _results import environment, md_table, reproduce_command, write_results

from rlprune.config import DataConfig, TrainConfig
from rlprune.data import DataSplits
from rlprune.jobs.pretrain import load_data
from rlprune.models import build_model
from rlprune.precision import autocast_dtype, use_channels_last
from rlprune.seeding import resolve_device, seed_everything
from rlprune.training.engine import fit
from rlprune.training.teachers import LogitEnsemble

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "train_throughput"
TRAIN_IMAGES = 45_000  # one epoch of the default split
COLUMNS = ["model", "batch_size", "teachers", "autocast", "channels_last", "images_per_s", "seconds_per_epoch"]


def measure(
    name: str,
    batch: int,
    splits: DataSplits,
    images: int,
    epochs: int,
    teachers: int,
    device: torch.device,
    channels_last: str = "auto",
) -> dict:
    """Seconds of the last of ``epochs`` epochs on ``images`` training images, scaled to a full epoch."""
    seed_everything(0)
    sub = DataSplits(
        splits.train.subset(range(images)), splits.val.subset(range(500)), splits.test, splits.mean, splits.std
    )
    model = build_model(name, num_classes=splits.num_classes, in_channels=splits.in_channels)
    teacher = None
    if teachers:
        members = [
            build_model("resnet20", num_classes=splits.num_classes, in_channels=splits.in_channels)
            for _ in range(teachers)
        ]
        teacher = LogitEnsemble(members) if teachers > 1 else members[0]
    recipe = TrainConfig(
        epochs=epochs,
        warmup_epochs=0,
        distill={"weight": 0.7 if teachers else 0.0},
        channels_last=channels_last if channels_last == "auto" else channels_last == "on",
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(
            model,
            sub,
            recipe,
            Path(tmp),
            meta={"model": name},
            batch_size=batch,
            cutout=16,
            device=device,
            teacher=teacher,
            resume=False,
            progress=False,
        )
    seconds = result.history[-1]["epoch_seconds"]
    per_epoch = seconds * TRAIN_IMAGES / images
    dtype = autocast_dtype(recipe.amp, device)
    return {
        "channels_last": use_channels_last(recipe.channels_last, dtype),
        "autocast": str(dtype).removeprefix("torch.") if dtype else "fp32",
        "model": name,
        "batch_size": batch,
        "teachers": teachers,
        "images_per_s": round(images / seconds),
        "seconds_per_epoch": round(per_epoch, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="zoo model (repeatable; default resnet20)")
    ap.add_argument("--batch-size", action="append", type=int, help="repeatable (default 128)")
    ap.add_argument("--teachers", action="append", type=int, help="ResNet-20 teachers in the step (repeatable; 0)")
    ap.add_argument("--images", type=int, default=10240, help="training images per timed epoch")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per point; the last is timed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--channels-last", action="append", choices=["auto", "on", "off"], help="repeatable (auto)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.model = args.model or ["resnet20"]
    args.batch_size = args.batch_size or [128]
    args.teachers = args.teachers or [0]
    args.channels_last = args.channels_last or ["auto"]
    device = resolve_device(args.device)
    splits = load_data(DataConfig())
    rows = [
        measure(m, b, splits, args.images, args.epochs, k, device, cl)
        for m in args.model
        for b in args.batch_size
        for k in args.teachers
        for cl in args.channels_last
    ]
    env = environment()
    table = md_table(
        ["model", "batch", "teachers", "precision", "channels-last", "images/s", "s per 45k-image epoch"],
        [[r[k] for k in COLUMNS] for r in rows],
    )
    where = env["cuda"] or f"{env['cpu']}, {env['threads']} threads"
    command = reproduce_command("benchmarks/train_throughput.py", args, ROOT)
    markdown = (
        f"# Training throughput through the engine\n\n{table}\n\nOne process on {where}, torch {env['torch']}, "
        f"commit {env['commit']}; the last of {args.epochs} epochs on {args.images} images, Cutout on, the engine's "
        f"AMP choice.\nReproduce: `{command}`."
    )
    write_results(args.out, {"rows": rows, "environment": env}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
