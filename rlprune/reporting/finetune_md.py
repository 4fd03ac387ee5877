"""report.md of a fine-tune (``rlprune apply`` / ``rlprune finetune``): the dense and pruned model side by side,
latency, the int8 section and the figures."""

from __future__ import annotations

import json
from typing import Any

from rlprune.io.reports import FinetuneReport
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


def finetune_markdown(r: FinetuneReport) -> str:
    """report.md's main table and figures from a fine-tune's report."""
    d, p = r.dense, r.pruned
    rows = [
        ["parameters", f"{d.params:,}", f"{p.params:,}", f"{r.params_ratio:.3f}"],
        ["MACs", f"{d.macs:,}", f"{p.macs:,}", f"{p.macs_ratio:.3f}"],
    ]
    for device, lat, digits in (("CPU", r.latency_ms_cpu, 2), ("GPU", r.latency_ms_gpu or {}, 3)):
        for bs in sorted(lat.get("dense", {}), key=int):
            rows.append(
                [
                    f"{device} latency, batch {bs} (ms)",
                    f"{lat['dense'][bs]:.{digits}f}",
                    f"{lat['pruned'][bs]:.{digits}f}",
                    f"{r.latency_ratio(bs, device.lower()):.3f}",
                ]
            )
    after, before = p.after_finetune, p.before_finetune
    rows += [
        ["validation accuracy (%)", f"{d.val:.2f}", f"{after.val:.2f}", f"{after.val - d.val:+.2f}"],
        ["test accuracy (%)", f"{d.test:.2f}", f"{after.test:.2f}", f"{after.test - d.test:+.2f}"],
        ["validation accuracy before fine-tune (%)", "", f"{before.val:.2f}", ""],
        ["test accuracy before fine-tune (%)", "", f"{before.test:.2f}", ""],
    ]
    ft, onnx = r.finetune, r.onnx
    return "\n".join(
        [
            f"# Pruning report — {r.model}",
            "",
            md_table(["", "dense", "pruned", "pruned / dense (or delta)"], rows),
            "",
            f"Fine-tune: {ft.epochs} epoch(s), lr {ft.lr}, distillation {'on' if ft.distill else 'off'}"
            + (f", the last {ft.swa['epochs']:g} averaged (SWA, lr {ft.swa['lr']:g})" if ft.swa else "")
            + ". "
            + (
                f"ONNX export ({onnx.get('exporter', 'legacy')}) checked against onnxruntime "
                f"(max |diff| {onnx['max_abs_diff']:.1e}). "
                if "error" not in onnx
                else f"**Warning**: no ONNX model ({onnx['error']}). "
            )
            + f"Source: {json.dumps(r.source)}.",
            "",
            *_figure_lines(r.figures or {}),
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
