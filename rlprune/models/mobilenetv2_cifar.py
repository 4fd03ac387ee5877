"""MobileNetV2 (Sandler et al., 2018), CIFAR variant: stride 1 in the stem and the second stage, so that a 32x32
input keeps a 4x4 map at the end instead of 1x1 (the usual adaptation in CIFAR pruning work)."""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in the paper's table 2 with CIFAR strides.
CIFAR_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: type[nn.Module] = nn.ReLU6
) -> nn.Sequential:
    """Conv (same padding, no bias) -> BN -> activation: the MobileNets' building block (v2: ReLU6, v1: ReLU)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(inplace=True),
    )


def init_mobilenet(model: nn.Module) -> None:
    """The MobileNet papers' initialization: Kaiming (fan-out) convs, a near-zero classifier."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear); residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(cin, hidden, 1, 1))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for small inputs.

    :param num_classes: classifier outputs.
    :param width_mult: channel multiplier.
    :param in_channels: input image channels.
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        stem = max(8, int(32 * width_mult))
        layers: list[nn.Module] = [conv_bn_act(in_channels, stem, 3, 1)]
        cin = stem
        for t, c, n, s in CIFAR_SETTINGS:
            cout = max(8, int(c * width_mult))
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = max(1280, int(1280 * width_mult))
        layers.append(conv_bn_act(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_mobilenet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> CifarMobileNetV2:
    """MobileNetV2 (CIFAR strides): about 2.2 M parameters, 94 M MACs on 32x32."""
    return CifarMobileNetV2(num_classes=num_classes, width_mult=width_mult, in_channels=in_channels)
