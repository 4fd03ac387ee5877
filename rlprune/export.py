"""ONNX export of a (pruned) model, checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune.errors import RLPruneError


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, atol: float = 1e-4
) -> dict[str, float]:
    """Export with a dynamic batch dimension and compare onnxruntime's outputs with PyTorch's on random inputs.

    :returns: ``{"max_abs_diff": ..., "opset": ...}``; raises if the outputs differ by more than ``atol``.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RLPruneError("ONNX export needs onnx and onnxruntime: pip install 'rlprune[export]'") from exc
    path = Path(path)
    model = model.eval().cpu()
    example = torch.randn(2, *input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(expected - got).max())
    if diff > atol:
        raise RLPruneError(f"{path}: onnxruntime outputs differ from PyTorch by {diff:.2e} (> {atol})")
    return {"max_abs_diff": diff, "opset": 17}
