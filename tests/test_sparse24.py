"""The CPU-side half of the 2:4 GPU benchmark: which layers the semi-structured kernels take, that the masks are
the 2-of-4 pattern they expect along each weight row, and a one-line refusal without a suitable GPU."""

from __future__ import annotations

import pytest
import torch
from sparse24_gpu import eligible_linears, main, min_shape, rows_per_sample

from rlprune.models import build_model
from rlprune.pruning.sparsity import sparsify


def test_eligible_layers_get_the_two_of_four_pattern_along_rows() -> None:
    torch.manual_seed(0)
    model = build_model("vit_cifar", dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10).eval()
    rows, cols = min_shape(torch.float16)
    assert rows >= 1 and cols >= 4 and cols % 4 == 0
    take, skip = eligible_linears(model, rows, cols)
    modules = dict(model.named_modules())
    for name in take:
        m, n = modules[name].weight.shape
        assert m % rows == 0 and n % cols == 0
    for name in skip:  # the 10-class head is too small for the kernels: it stays dense
        m, n = modules[name].weight.shape
        assert m % rows or n % cols or m < rows or n < cols
    assert "head" in skip and any(n.endswith("fc1") for n in take)
    masks = sparsify(model, pattern="2:4", layers=take)
    assert set(masks.masks) == set(take)
    for name in take:
        w = modules[name].weight.detach()
        per_group = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert bool((per_group == 2).all())  # 2 of every 4 along the input dimension kept (the kernels' layout)
    assert rows_per_sample(model, modules[take[0]], torch.zeros(3, 3, 32, 32)) > 1  # tokens per image


def test_refuses_in_one_line_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["sparse24_gpu.py"])
    with pytest.raises(SystemExit, match="needs a CUDA GPU of compute capability 8.0") as info:
        main()
    assert "\n" not in str(info.value.code)
