"""Which reduced precision to compute in: bf16 autocast is faster on CPUs with native bf16 (and on GPUs)."""

from __future__ import annotations

import torch


def autocast_dtype(amp: str, device: torch.device | str) -> torch.dtype | None:
    """Resolve an ``amp`` setting (``auto``, ``bf16``, ``fp16``, ``off``) to an autocast dtype, or ``None`` for fp32.

    ``auto`` takes bf16 on CUDA and on CPUs with native bf16 support; fp16 is only honoured on CUDA.
    """
    device = torch.device(device)
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16 if device.type == "cuda" else None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    bf16_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.bfloat16 if bf16_check is not None and bf16_check() else None


def scoring_dtype(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype a plan is scored in: as :func:`autocast_dtype`, except that ``auto`` stays in float32 on a
    CPU. bf16 kernels on a CPU split their sums by thread, so a plan would score differently (by up to two points)
    with 1 thread than with 2, and a search's result would depend on the machine and its worker count; float32
    forward passes do not. ``bf16`` still forces it, for speed over reproducibility."""
    if amp == "auto" and torch.device(device).type == "cpu":
        return None
    return autocast_dtype(amp, device)


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type, or a disabled context (float32) when ``dtype`` is ``None``."""
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def use_channels_last(setting: bool | str, dtype: torch.dtype | None) -> bool:
    """Resolve a ``channels_last`` setting: ``auto`` means on with autocast only (tensor-core and oneDNN bf16 kernels
    want NHWC). Not for fp32 on a CPU: there a dense network's step may be faster in NHWC, but a pruned one's (odd
    channel counts) is slower, and pruned models are what fine-tuning and the search's proxy train.
    """
    if setting != "auto":
        return bool(setting)
    return dtype is not None
