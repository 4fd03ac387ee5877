from __future__ import annotations

import pytest
import torch

from rlprune.errors import RLPruneError
from rlprune.models import MODELS, build_model

# Parameter counts of the zoo (1x1-conv shortcuts for the ResNets; CIFAR variants).
PARAMS = {
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet56": 855_770,
    "resnet110": 1_730_714,
    "vgg16_bn": 14_724_042,
    "mobilenetv2": 2_236_682,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_forward_shape_and_params(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    full = build_model(name)
    assert sum(p.numel() for p in full.parameters()) == PARAMS[name]


def test_grayscale_input() -> None:
    assert build_model("resnet20", in_channels=1)(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_import_path_model() -> None:
    model = build_model("torch.nn:Linear", in_features=4, out_features=2)
    assert isinstance(model, torch.nn.Linear)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet21", {}, "not in the zoo"),
        ("no_such_pkg.mod:f", {}, "cannot import module 'no_such_pkg.mod'"),
        ("torch.nn:NoSuchThing", {}, "has no callable 'NoSuchThing'"),
        ("resnet20", {"colour": 3}, "bad keyword arguments"),
        ("torch:zeros", {}, "bad keyword arguments|expected a torch.nn.Module"),
    ],
)
def test_bad_models(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(RLPruneError, match=match):
        build_model(name, **kwargs)


def test_resnet_depth_check() -> None:
    from rlprune.models.resnet_cifar import CifarResNet

    with pytest.raises(ValueError, match=r"6n\+2"):
        CifarResNet(depth=21)
