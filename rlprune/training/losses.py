"""Training losses: label-smoothed cross-entropy with an optional knowledge-distillation term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    temperature: float = 4.0,
    weight: float = 0.5,
) -> torch.Tensor:
    """``(1-w)·CE + w·T²·KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al., 2015); plain CE without a teacher.

    The T² factor keeps the soft-target gradients on the same scale as the hard-label ones.
    """
    ce = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    if teacher_logits is None or weight == 0:
        return ce
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * ce + weight * temperature**2 * kl
