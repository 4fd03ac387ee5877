"""MobileNet (Howard et al., 2017), CIFAR variant: a plain chain of depthwise-separable blocks (3x3 depthwise, then
1x1 pointwise), no expansion and no residuals. It is the depthwise family that MobileNetV2 is not: a generalist
policy can learn what depthwise layers tolerate on it and still be tested on MobileNetV2 as an unseen family."""

from __future__ import annotations

import torch
from torch import nn

from rlprune.models.mobilenetv2_cifar import conv_bn_act, init_mobilenet

# (output channels, stride) of each depthwise-separable block; the stem keeps 32x32 (stride 1) as is usual on CIFAR.
CIFAR_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (one filter per channel) followed by a 1x1 pointwise conv, each with BN and ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_bn_act(cin, cin, 3, stride, groups=cin, act=nn.ReLU)
        self.pointwise = conv_bn_act(cin, cout, 1, 1, act=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class CifarMobileNetV1(nn.Module):
    """MobileNet (v1) for small inputs.

    :param num_classes: classifier outputs.
    :param width_mult: channel multiplier (the paper's alpha).
    :param in_channels: input image channels.
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        cin = max(8, int(32 * width_mult))
        layers: list[nn.Module] = [conv_bn_act(in_channels, cin, 3, 1, act=nn.ReLU)]
        for channels, stride in CIFAR_BLOCKS:
            cout = max(8, int(channels * width_mult))
            layers.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_mobilenet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv1(num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> CifarMobileNetV1:
    """MobileNet v1 (CIFAR strides): about 3.2 M parameters, 47 M MACs on 32x32 at width 1."""
    return CifarMobileNetV1(num_classes=num_classes, width_mult=width_mult, in_channels=in_channels)
