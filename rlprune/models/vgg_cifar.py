"""VGG-16 with batch norm, CIFAR variant: 13 conv layers and a single linear classifier (as in network-slimming
and most CIFAR pruning papers), so that 32x32 inputs end in a 1x1 feature map."""

from __future__ import annotations

import torch
from torch import nn

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG-style stack of 3x3 conv + BN + ReLU with max-pooling, then global pooling and a linear classifier.

    :param cfg: channel counts, ``"M"`` for a 2x2 max-pool.
    :param num_classes: classifier outputs.
    :param in_channels: input image channels.
    """

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = int(v)
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-16-BN for CIFAR: about 14.7 M parameters, 313 M MACs on 32x32."""
    return CifarVGG(VGG16_CFG, num_classes=num_classes, in_channels=in_channels)


def vgg11_bn(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> CifarVGG:
    """VGG-11-BN for CIFAR (8 conv layers, five 2x2 pools down to 1x1); ``width_mult`` scales every layer's channels
    (0.5: about 2.3 M parameters, 39 M MACs on 32x32, a VGG that trains on 2 CPU cores in minutes per epoch)."""
    if not 0 < width_mult <= 4:
        raise ValueError(f"width_mult must lie in (0, 4], got {width_mult}")
    cfg = tuple(v if v == "M" else max(8, int(int(v) * width_mult)) for v in VGG11_CFG)
    return CifarVGG(cfg, num_classes=num_classes, in_channels=in_channels)
