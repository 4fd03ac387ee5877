"""Cross-check of the project's MACs counter (rlprune.cost.macs.count_macs, forward hooks on conv and linear layers)
against PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` (which counts every aten conv / matmul call).

Use it on any model a test builds: ``assert_macs_match_flop_counter(model, (3, 32, 32))``. A mismatch names the
aten ops PyTorch counted, so a model whose compute the hooks miss (a layer called twice, a functional matmul such as
attention's ``q @ k^T``) fails loudly instead of reporting too few MACs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rlprune.cost.macs import count_macs


def flop_counter_macs(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, dict[str, int]]:
    """MACs of one forward pass at batch 1 as FlopCounterMode counts them (its FLOPs / 2, bias additions not
    counted), and its FLOPs per aten op."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, *input_shape, device=device))
    flops = counter.get_total_flops()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    assert flops % 2 == 0, f"FlopCounterMode counted an odd number of FLOPs ({flops}): not multiply-accumulates"
    return flops // 2, by_op


def assert_macs_match_flop_counter(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Assert that rlprune counts exactly the MACs PyTorch's counter counts; returns them."""
    ours = count_macs(model, tuple(input_shape))
    theirs, by_op = flop_counter_macs(model, input_shape)
    assert ours == theirs, (
        f"rlprune counts {ours:,} MACs, FlopCounterMode {theirs:,} (FLOPs per op: {by_op}) for "
        f"{type(model).__name__} on input {tuple(input_shape)}"
    )
    assert ours > 0
    return ours
