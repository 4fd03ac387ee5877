"""Small networks of the building blocks users' models are made of, for the compatibility suite.

Each factory takes ``in_channels`` and ``num_classes`` (as users' factories do) and is importable by path
(``tests.compat_models:grouped_se``) for the CLI tests. Widths are small on purpose: the structure is what matters.
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class InceptionBlock(nn.Module):
    """Three branches of different widths concatenated: a consumer's inputs come from three units."""

    def __init__(self, cin: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        self.b1 = _cbr(cin, widths[0], 1)
        self.b3 = nn.Sequential(_cbr(cin, widths[1], 1), _cbr(widths[1], widths[1], 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(cin, widths[2], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.pool(x)], dim=1)


class InceptionNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16, 3, 2)
        self.block1 = InceptionBlock(16, (8, 12, 4))
        self.block2 = InceptionBlock(24, (16, 8, 8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))))


def inception(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return InceptionNet(in_channels, num_classes)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class GroupedSEBlock(nn.Module):
    """ResNeXt-style bottleneck (1x1 → grouped 3x3 → 1x1) with squeeze-excitation gating and a residual add."""

    def __init__(self, channels: int, width: int, groups: int) -> None:
        super().__init__()
        self.reduce = _cbr(channels, width, 1)
        self.grouped = _cbr(width, width, 3, groups=groups)
        self.se = SqueezeExcite(width, max(4, width // 4))
        self.expand = nn.Sequential(nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.expand(self.se(self.grouped(self.reduce(x)))))


class GroupedSENet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, groups: int = 4) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 24, 3)
        self.block1 = GroupedSEBlock(24, 48, groups)
        self.down = _cbr(24, 40, 3, 2, groups=4)
        self.block2 = GroupedSEBlock(40, 32, groups)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.down(self.block1(self.stem(x)))))


def grouped_se(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return GroupedSENet(in_channels, num_classes)


def mlp_head(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Convs, adaptive pooling to a size that does not divide the feature map (7 → 3), then hidden Linear + dropout."""
    return nn.Sequential(
        _cbr(in_channels, 16, 3, 2),
        _cbr(16, 24, 3, 2),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(24 * 9, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(32, num_classes),
    )


def grayscale(in_channels: int = 1, num_classes: int = 5) -> nn.Module:
    """A single-channel network (28x28 digits-like input) with a residual stage."""
    return nn.Sequential(
        _cbr(in_channels, 12, 3), _cbr(12, 16, 3, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)
    )


class MHANet(nn.Module):
    """Patch embedding, one ``nn.MultiheadAttention`` block and a token MLP (pruned by head dimensions)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, 4, 4)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.fc2(torch.relu(self.fc1(self.norm2(t))))
        return self.head(t.mean(1))


def mha(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return MHANet(in_channels, num_classes)


class BertSelfAttention(nn.Module):
    """Hugging Face's older style: query/key/value Linear layers, reshaped by the ``num_attention_heads`` attribute
    (which head pruning must update), output projection in another module."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = dim // heads
        self.all_head_size = dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.softmax(q @ k.transpose(-1, -2) / self.attention_head_size**0.5, dim=-1)
        return (scores @ v).transpose(1, 2).reshape(b, n, self.all_head_size)


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = BertSelfAttention(dim, heads)
        self.output = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.intermediate = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.output(self.attention(x))))
        return self.norm2(x + self.dropout(self.out(torch.nn.functional.gelu(self.intermediate(x)))))


class MiniBert(nn.Module):
    """Token ids in, a class out: embeddings + learned positions, two encoder layers, the first token classified."""

    def __init__(self, num_classes: int = 4, vocab: int = 100, tokens: int = 16, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.Sequential(BertLayer(dim, heads), BertLayer(dim, heads))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(self.embed(ids) + self.position)[:, 0])


def mini_bert(num_classes: int = 4) -> nn.Module:
    return MiniBert(num_classes)


def mini_vit(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    from rlprune.models.vit import vit_cifar

    return vit_cifar(num_classes=num_classes, in_channels=in_channels, dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


class HandMadeMix(nn.Module):
    """A leaf layer doing its own matrix product with its own weight: torch-pruning has no pruner for it."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / cin**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


class HandMadeMixNet(nn.Module):
    """Convs, then a hand-made channel mix before the classifier: refused unless the mix is ignored."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16, 3, 2)
        self.body = _cbr(16, 24, 3, 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mix = HandMadeMix(24, 20)
        self.head = nn.Linear(20, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.pool(self.body(self.stem(x))))))


def hand_made_mix(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return HandMadeMixNet(in_channels, num_classes)


class HeadDimAttention(nn.Module):
    """An attention that stores only its head size and reshapes with ``-1`` heads (so pruned heads need no update),
    or, with ``count_attr``, keeps its head count under a name rlprune does not know; projections named by
    ``names`` (q/k/v-like by default)."""

    def __init__(self, dim: int, head_dim: int, names: tuple[str, str, str] = ("q", "k", "v"), count_attr: str = ""):
        super().__init__()
        self.dim_head = head_dim
        self.names = names
        self.count_attr = count_attr
        if count_attr:
            setattr(self, count_attr, dim // head_dim)
        for n in names:
            self.add_module(n, nn.Linear(dim, dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = getattr(self, self.count_attr) if self.count_attr else -1
        q, k, v = (getattr(self, name)(x).view(b, n, heads, self.dim_head).transpose(1, 2) for name in self.names)
        out = torch.softmax(q @ k.transpose(-1, -2) / self.dim_head**0.5, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class HeadDimTransformer(nn.Module):
    """Patch embedding, one block with :class:`HeadDimAttention` (4 heads of 8) and a token MLP, mean-pooled."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, **attn: object) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, 32, 4, 4)
        self.norm = nn.LayerNorm(32)
        self.attn = HeadDimAttention(32, 8, **attn)  # type: ignore[arg-type]
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm(t))
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(1))


def head_dim_transformer(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return HeadDimTransformer(in_channels, num_classes)
