"""CIFAR ResNets (He et al., 2016, section 4.2) with BasicBlocks.

The downsampling shortcut is a 1x1 convolution + batch norm ("option B"). The zero-padding shortcut ("option A") is
not offered on purpose: torch-pruning's dependency tracing merges every stage into one group through it and the
pruned model then crashes.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: three stages of n blocks with 16, 32 and 64 channels.

    :param depth: total depth, 6n+2 (20, 32, 44, 56, 110, ...).
    :param num_classes: classifier outputs.
    :param width: channels of the first stage (16 in the paper); stages double it.
    :param in_channels: input image channels (3 for RGB, 1 for grayscale).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth: expected 6n+2 with n >= 1 (20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.blocks_per_stage = n
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        in_planes = width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: each block starts as identity, which trains faster.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(**kwargs: int) -> CifarResNet:
    """ResNet-20: about 0.27 M parameters, 41 M MACs on 32x32."""
    return CifarResNet(depth=20, **kwargs)


def resnet32(**kwargs: int) -> CifarResNet:
    """ResNet-32: about 0.47 M parameters."""
    return CifarResNet(depth=32, **kwargs)


def resnet56(**kwargs: int) -> CifarResNet:
    """ResNet-56: about 0.86 M parameters, 127 M MACs on 32x32."""
    return CifarResNet(depth=56, **kwargs)


def resnet110(**kwargs: int) -> CifarResNet:
    """ResNet-110: about 1.7 M parameters."""
    return CifarResNet(depth=110, **kwargs)
