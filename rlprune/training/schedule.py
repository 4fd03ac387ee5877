"""Per-step learning-rate schedules expressed as multipliers of the peak LR (resumable through ``LambdaLR``)."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(kind: str, total_steps: int, warmup_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """Return ``step -> factor`` for the schedule.

    - ``cosine``: linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to 0.
    - ``onecycle``: warm-up from 1/25 to 1, then cosine decay to 1/10⁴ (Smith's one-cycle, without momentum cycling).

    :param floor: decay to this factor instead, and hold it after ``total_steps`` (the constant phase of SWA).
    """
    start, end = (0.0, 0.0) if kind == "cosine" else (1 / 25, 1e-4)
    end = max(end, floor)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return start + (1 - start) * (step + 1) / warmup_steps
        if step >= total_steps:  # also when nothing is left to decay over (SWA right after warm-up)
            return end
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
