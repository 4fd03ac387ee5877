"""Running average of a model's weights for stochastic weight averaging (SWA, Izmailov et al., 2018).

Only parameters are averaged: batch-norm running statistics of the averaged weights are not the average of the
iterates' statistics, so they are re-estimated from training batches once the average is final.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """Equal-weight average of the parameters of every model passed to :meth:`update` (kept in fp32 on CPU)."""

    def __init__(self) -> None:
        self.count = 0
        self.params: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters into the average."""
        self.count += 1
        for name, p in model.named_parameters():
            value = p.detach().float().cpu().contiguous()
            if name not in self.params:
                self.params[name] = value.clone()
            else:
                self.params[name] += (value - self.params[name]) / self.count

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the average (BN statistics are left for the caller to refresh)."""
        if not self.count:
            raise ValueError("no weights have been averaged yet")
        for name, p in model.named_parameters():
            p.copy_(self.params[name].to(device=p.device, dtype=p.dtype))

    def state_dict(self) -> dict[str, object]:
        """Tensors and an int only, so the resume state stays loadable with ``weights_only=True``."""
        return {"count": self.count, "params": dict(self.params)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.count = int(state["count"])  # type: ignore[arg-type]
        self.params = dict(state["params"])  # type: ignore[arg-type]
