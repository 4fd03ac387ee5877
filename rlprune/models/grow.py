"""Function-preserving deepening of CIFAR ResNets (Net2DeeperNet; Chen, Goodfellow and Shlens, 2016).

A deeper baseline costs most of its training time reaching the accuracy a shallower one already has. Copying a
trained ResNet-(6m+2) into the first m blocks of each stage of a ResNet-(6n+2), n >= m, and making the n-m extra
blocks identities (their last batch norm scaled to zero, so ``relu(0 + x) = x`` for the non-negative ``x`` a block
receives) gives a deeper network that computes exactly the shallower one's function; a warm restart then only has to
teach it what the extra depth adds.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import fit_weights
from rlprune.models.resnet_cifar import CifarResNet

_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


def deepen_resnet(target: nn.Module, source: nn.Module, what: str = "init_from") -> None:
    """Overwrite ``target``'s weights so that it computes ``source``'s function (both CIFAR ResNets, same width).

    :param target: the deeper (or equally deep) model; modified in place.
    :param source: the trained shallower model.
    :param what: the name errors give the source (a config field or a path).
    """
    if not isinstance(target, CifarResNet) or not isinstance(source, CifarResNet):
        got = f"{type(source).__name__} -> {type(target).__name__}"
        raise RLPruneError(f"{what}: only a CIFAR ResNet deepens into another (got {got})")
    m, n = source.blocks_per_stage, target.blocks_per_stage
    if m > n:
        raise RLPruneError(f"{what}: the source has {m} blocks per stage, more than the target's {n}; it cannot deepen")
    state = target.state_dict()  # the extra blocks keep their own weights; the source's replace the rest
    for key, value in source.state_dict().items():
        match = _BLOCK_KEY.match(key)
        if match:
            index = int(match.group(1))
            key = f"layers.{index // m * n + index % m}.{match.group(2)}"
        state[key] = value
    fit_weights(target, state, what)
    with torch.no_grad():
        for stage in range(3):
            for j in range(m, n):
                block = target.layers[stage * n + j]
                block.bn2.weight.zero_()
                block.bn2.bias.zero_()
