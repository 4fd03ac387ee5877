"""ONNX export of a (pruned) model, checked against onnxruntime.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``) is tried first: it is the
maintained path and handles ops the legacy TorchScript exporter refuses (``AdaptiveAvgPool2d`` to a size that does
not divide its input, attention). The legacy exporter is the fallback. An export both refuse raises one
``RLPruneError`` naming both reasons; callers that already hold a fine-tuned model turn it into a warning.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune.errors import RLPruneError

OPSET = 18
log = logging.getLogger("rlprune.deploy.onnx")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    import onnxscript  # noqa: F401 - the dynamo exporter's dependency; a clear ImportError if missing

    quiet = logging.getLogger("torch.onnx")  # it warns about torchvision ops it cannot register
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        finally:
            quiet.setLevel(level)
        program.save(str(path), external_data=False)


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, atol: float = 1e-4, exporter: str = "auto"
) -> dict[str, object]:
    """Export with a dynamic batch dimension and compare onnxruntime's outputs with PyTorch's on random inputs.

    :param exporter: ``auto`` (dynamo, then legacy), ``dynamo`` or ``legacy``.
    :returns: ``{"max_abs_diff": ..., "opset": ..., "exporter": ...}``; raises if no exporter produced a model
        whose outputs match within ``atol``.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RLPruneError("ONNX export needs onnx and onnxruntime: pip install 'rlprune[export]'") from exc
    path = Path(path)
    if exporter not in ("auto", "dynamo", "legacy"):
        raise RLPruneError(f"export: exporter must be auto, dynamo or legacy, got '{exporter}'")
    model = model.eval().cpu()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(1))
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(5, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    expected = getattr(expected, "logits", expected).numpy()
    order = {"auto": ("dynamo", "legacy"), "dynamo": ("dynamo",), "legacy": ("legacy",)}[exporter]
    failures: list[str] = []
    for name in order:
        try:
            (_export_dynamo if name == "dynamo" else _export_legacy)(model, example, path)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        except Exception as exc:  # exporters and onnxruntime fail in many types
            failures.append(f"{name} exporter: {_first_line(exc)}")
            log.info("ONNX %s export failed: %s", name, failures[-1])
            continue
        diff = float(np.abs(expected - got).max())
        if diff > atol:
            failures.append(f"{name} exporter: onnxruntime outputs differ from PyTorch by {diff:.2e} (> {atol})")
            continue
        return {"max_abs_diff": diff, "opset": OPSET if name == "dynamo" else 17, "exporter": name}
    path.unlink(missing_ok=True)
    raise RLPruneError(f"{path}: ONNX export failed ({'; '.join(failures)})")
