"""report.md of a fine-tune (``rlprune apply`` / ``rlprune finetune``): the dense and pruned model side by side,
latency, the int8 section and the figures."""

from __future__ import annotations

import json
from typing import Any

from rlprune.reporting.tables import md_table


def int8_markdown(block: dict[str, Any] | None) -> str:
    """The int8 section of report.md: the pruned model in ONNX Runtime, fp32 against static int8."""
    if not block:
        return ""
    fp, q = block["fp32"], block["int8"]
    rows = [["file size (bytes)", f"{block['bytes']['fp32']:,}", f"{block['bytes']['int8']:,}"]]
    for split in ("val", "test"):
        if split in fp and split in q:
            rows.append([f"{split} accuracy (%)", f"{fp[split]['accuracy']:.2f}", f"{q[split]['accuracy']:.2f}"])
            rows.append([f"{split} macro-F1", f"{fp[split]['macro_f1']:.4f}", f"{q[split]['macro_f1']:.4f}"])
    for bs, ms in fp["latency_ms_ort"].items():
        rows.append([f"ONNX Runtime latency, batch {bs} (ms)", f"{ms:.2f}", f"{q['latency_ms_ort'][bs]:.2f}"])
    table = md_table(["", "fp32", "int8"], rows)
    return f"\n## int8 (ONNX Runtime static quantization, pruned model)\n\n{table}\n"


def finetune_markdown(r: dict[str, Any]) -> str:
    """report.md's main table and figures from a fine-tune's report."""
    d, p = r["dense"], r["pruned"]
    lat = r["latency_ms_cpu"]
    rows = [
        ["parameters", f"{d['params']:,}", f"{p['params']:,}", f"{p['params'] / d['params']:.3f}"],
        ["MACs", f"{d['macs']:,}", f"{p['macs']:,}", f"{p['macs_ratio']:.3f}"],
    ]
    for bs in sorted(lat["dense"], key=int):
        rows.append(
            [
                f"CPU latency, batch {bs} (ms)",
                f"{lat['dense'][bs]:.2f}",
                f"{lat['pruned'][bs]:.2f}",
                f"{lat['pruned'][bs] / lat['dense'][bs]:.3f}",
            ]
        )
    if r["latency_ms_gpu"]:
        g = r["latency_ms_gpu"]
        for bs in sorted(g["dense"], key=int):
            rows.append(
                [
                    f"GPU latency, batch {bs} (ms)",
                    f"{g['dense'][bs]:.3f}",
                    f"{g['pruned'][bs]:.3f}",
                    f"{g['pruned'][bs] / g['dense'][bs]:.3f}",
                ]
            )
    rows += [
        [
            "validation accuracy (%)",
            f"{d['val']:.2f}",
            f"{p['after_finetune']['val']:.2f}",
            f"{p['after_finetune']['val'] - d['val']:+.2f}",
        ],
        [
            "test accuracy (%)",
            f"{d['test']:.2f}",
            f"{p['after_finetune']['test']:.2f}",
            f"{p['after_finetune']['test'] - d['test']:+.2f}",
        ],
        ["validation accuracy before fine-tune (%)", "", f"{p['before_finetune']['val']:.2f}", ""],
        ["test accuracy before fine-tune (%)", "", f"{p['before_finetune']['test']:.2f}", ""],
    ]
    ft = r["finetune"]
    return "\n".join(
        [
            f"# Pruning report — {r['model']}",
            "",
            md_table(["", "dense", "pruned", "pruned / dense (or delta)"], rows),
            "",
            f"Fine-tune: {ft['epochs']} epoch(s), lr {ft['lr']}, distillation {'on' if ft['distill'] else 'off'}"
            + (f", the last {ft['swa']['epochs']} averaged (SWA, lr {ft['swa']['lr']:g})" if ft.get("swa") else "")
            + ". "
            + (
                f"ONNX export ({r['onnx'].get('exporter', 'legacy')}) checked against onnxruntime "
                f"(max |diff| {r['onnx']['max_abs_diff']:.1e}). "
                if "error" not in r["onnx"]
                else f"**Warning**: no ONNX model ({r['onnx']['error']}). "
            )
            + f"Source: {json.dumps(r['source'])}.",
            "",
            *_figure_lines(r.get("figures") or {}),
        ]
    )


FIGURE_CAPTIONS = {
    "plan_profile": "Channels kept per unit against the dense model, and each unit's share of the MACs",
    "finetune": "Fine-tune: accuracy and loss per epoch",
}


def _figure_lines(files: dict[str, str]) -> list[str]:
    """Markdown image lines for the report's figures (files beside report.md)."""
    return [line for name, file in files.items() for line in (f"![{FIGURE_CAPTIONS.get(name, name)}]({file})", "")]


__all__ = ["FIGURE_CAPTIONS", "finetune_markdown", "int8_markdown"]
