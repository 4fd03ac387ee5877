"""Which third-party architectures rlprune prunes exactly: Hugging Face ``transformers`` models built from small
configs (random weights, nothing downloaded, CPU), each analyzed, pruned uniformly to 0.3 / 0.5 / 0.7 of its MACs
and checked on the physically pruned model (forward shape, predicted vs measured MACs).

    pip install -e '.[hf]'
    python benchmarks/model_coverage.py [--image-size 64] [--tokens 32]

Writes benchmarks/results/model_coverage.{json,md}. Status per model: ``ok`` (every budget met on the real model
with the prediction within 1%), ``inexact`` (pruned, a prediction off by more), ``refused`` (rlprune's one-line
refusal, naming the part), or ``traceback`` (an exception that is not a refusal: a bug to fix).
"""

from __future__ import annotations

import argparse
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _results import environment, md_table, reproduce_command, write_results
from torch import nn

from rlprune.cost.budget import uniform_plan
from rlprune.cost.macs import count_macs, predict_costs
from rlprune.errors import RLPruneError
from rlprune.pruning import analyze, prune

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "model_coverage"
BUDGETS = (0.3, 0.5, 0.7)
LABELS = 10


class Logits(nn.Module):
    """A Hugging Face model as users' models are: input tensor in, logits tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def architectures(size: int) -> dict[str, tuple[Callable[[], nn.Module], bool]]:
    """name -> (builder, takes token ids). Small configs: the structure is what is being tested."""
    import transformers as tf

    def vision(config_cls: str, model_cls: str, **kw: Any) -> Callable[[], nn.Module]:
        return lambda: getattr(tf, model_cls)(getattr(tf, config_cls)(num_labels=LABELS, **kw))

    def text(config_cls: str, model_cls: str, **kw: Any) -> Callable[[], nn.Module]:
        return lambda: getattr(tf, model_cls)(getattr(tf, config_cls)(num_labels=LABELS, vocab_size=100, **kw))

    stages = {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}
    vit = {"image_size": size, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    vit["intermediate_size"] = 128
    bert = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    return {
        "ResNet (basic)": (
            vision("ResNetConfig", "ResNetForImageClassification", layer_type="basic", embedding_size=16, **stages),
            False,
        ),
        "ResNet (bottleneck)": (
            vision(
                "ResNetConfig", "ResNetForImageClassification", layer_type="bottleneck", embedding_size=16, **stages
            ),
            False,
        ),
        "ConvNeXt": (vision("ConvNextConfig", "ConvNextForImageClassification", **stages), False),
        "ConvNeXtV2": (vision("ConvNextV2Config", "ConvNextV2ForImageClassification", **stages), False),
        "MobileNetV1": (
            vision("MobileNetV1Config", "MobileNetV1ForImageClassification", depth_multiplier=0.25, image_size=size),
            False,
        ),
        "MobileNetV2": (
            vision("MobileNetV2Config", "MobileNetV2ForImageClassification", depth_multiplier=0.35, image_size=size),
            False,
        ),
        "EfficientNet": (
            vision(
                "EfficientNetConfig",
                "EfficientNetForImageClassification",
                image_size=size,
                width_coefficient=0.25,
                depth_coefficient=0.25,
                hidden_dim=320,  # its top conv's width at this width coefficient (the config does not derive it)
            ),
            False,
        ),
        "RegNet": (
            vision(
                "RegNetConfig",
                "RegNetForImageClassification",
                embedding_size=16,
                hidden_sizes=[16, 32, 48, 64],
                depths=[1, 1, 1, 1],
                groups_width=8,
            ),
            False,
        ),
        "ViT": (vision("ViTConfig", "ViTForImageClassification", **vit), False),
        "DeiT": (vision("DeiTConfig", "DeiTForImageClassification", **vit), False),
        "Swin": (
            vision(
                "SwinConfig",
                "SwinForImageClassification",
                image_size=size,
                patch_size=4,
                embed_dim=32,
                depths=[1, 1],
                num_heads=[2, 4],
                window_size=4,
            ),
            False,
        ),
        "LeViT": (
            vision(
                "LevitConfig",
                "LevitForImageClassification",
                image_size=size,
                hidden_sizes=[64, 96, 128],
                num_attention_heads=[2, 3, 4],
                depths=[1, 1, 1],
                key_dim=[16, 16, 16],
            ),
            False,
        ),
        "PoolFormer": (
            vision(
                "PoolFormerConfig",
                "PoolFormerForImageClassification",
                hidden_sizes=[16, 32, 48, 64],
                depths=[1, 1, 1, 1],
            ),
            False,
        ),
        "MobileViT": (
            vision(
                "MobileViTConfig",
                "MobileViTForImageClassification",
                image_size=size,
                hidden_sizes=[32, 48, 64],
                neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 96],
            ),
            False,
        ),
        "BERT": (text("BertConfig", "BertForSequenceClassification", **bert), True),
        "DistilBERT": (
            text(
                "DistilBertConfig", "DistilBertForSequenceClassification", dim=64, n_layers=2, n_heads=4, hidden_dim=128
            ),
            True,
        ),
        "RoBERTa": (text("RobertaConfig", "RobertaForSequenceClassification", **bert), True),
    }


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:240]}"


def cover(name: str, build: Callable[[], nn.Module], tokens: bool, size: int, seq: int) -> dict[str, Any]:
    """Analyze, prune at each budget and measure; every outcome is recorded, nothing raised."""
    started = time.perf_counter()
    row: dict[str, Any] = {"model": name, "input": "token ids" if tokens else "image"}
    shape = (seq,) if tokens else (3, size, size)
    dtype = torch.long if tokens else torch.float32
    example = torch.zeros(1, *shape, dtype=dtype)
    try:
        torch.manual_seed(0)
        model = Logits(build()).eval()
        structure = analyze(model, example)
        row["units"] = len(structure.units)
        row["kinds"] = sorted({u.kind for u in structure.units})
        row["dense_macs"] = count_macs(model, shape, dtype=dtype)
        row["predicted_dense_macs"] = structure.total_macs
        budgets = []
        for target in BUDGETS:
            plan = uniform_plan(structure, target)
            pruned, done = prune(model, plan, example)
            with torch.no_grad():
                out = pruned(torch.zeros(2, *shape, dtype=dtype))
            if tuple(out.shape) != (2, LABELS):
                raise RuntimeError(f"pruned model outputs {tuple(out.shape)}")
            predicted = predict_costs(structure, done.channels)[0]
            measured = count_macs(pruned, shape, dtype=dtype)
            budgets.append(
                {
                    "target": target,
                    "predicted_ratio": round(predicted / structure.total_macs, 4),
                    "measured_ratio": round(measured / row["dense_macs"], 4),
                    "error": round(abs(predicted - measured) / measured, 5),
                }
            )
        row["budgets"] = budgets
        exact = all(b["error"] <= 0.01 for b in budgets) and structure.total_macs == row["dense_macs"]
        row["status"] = "ok" if exact else "inexact"
    except RLPruneError as exc:
        row["status"] = "refused"
        row["reason"] = str(exc)
    except Exception as exc:  # a bug to fix: recorded with its place, the benchmark goes on
        row["status"] = "traceback"
        row["reason"] = one_line(exc)
        row["where"] = traceback.format_exc().strip().splitlines()[-3].strip()
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    rows = []
    for name, (build, tokens) in architectures(args.image_size).items():
        if wanted and name not in wanted:
            continue
        row = cover(name, build, tokens, args.image_size, args.tokens)
        print(f"{name}: {row['status']} {row.get('reason', '')} ({row['seconds']} s)", flush=True)
        rows.append(row)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "inexact", "refused", "traceback")}
    import transformers

    data = {
        "models": rows,
        "counts": counts,
        "budgets": list(BUDGETS),
        "image_size": args.image_size,
        "tokens": args.tokens,
        "transformers": transformers.__version__,
        "environment": environment(),
        "command": reproduce_command("benchmarks/model_coverage.py", args, ROOT),
    }
    table = []
    for r in rows:
        if r["status"] in ("ok", "inexact"):
            detail = ", ".join(
                f"{b['target']}: {b['predicted_ratio']:.3f} / {b['measured_ratio']:.3f}" for b in r["budgets"]
            )
            detail += f" ({', '.join(r['kinds'])})"
        else:
            detail = r["reason"]
        table.append([r["model"], r["status"], detail, r["seconds"]])
    md = "\n".join(
        [
            "# Model coverage: Hugging Face architectures (random weights, CPU)",
            "",
            f"Uniform plans at {', '.join(str(b) for b in BUDGETS)} of dense MACs; predicted / measured MACs ratio "
            f"on the physically pruned model; unit kinds found. {counts['ok']} of {len(rows)} pruned exactly, "
            f"{counts['refused']} refused in one line, {counts['inexact']} inexact, {counts['traceback']} tracebacks. "
            f"transformers {transformers.__version__}, images {args.image_size}x{args.image_size}, "
            f"{args.tokens} tokens.",
            "",
            md_table(["model", "status", "budget: predicted / measured (or reason)", "seconds"], table),
            "",
            f"Reproduce: `{data['command']}`",
            "",
        ]
    )
    write_results(args.out, data, md)


if __name__ == "__main__":
    main()
