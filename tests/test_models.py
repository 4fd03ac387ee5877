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
    "vgg11_bn": 9_228_362,
    "vgg16_bn": 14_724_042,
    "mobilenetv1": 3_217_226,
    "mobilenetv2": 2_236_682,
    "vit_cifar": 1_806_538,
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


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random non-trivial weights and BN statistics, as a trained model has (the default init zeroes bn2's scale)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                low = 0.5 if name.endswith("running_var") else -0.5
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + low)
    return model


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_deepen_resnet_preserves_the_function(depth: int) -> None:
    from rlprune.models.grow import deepen_resnet

    source = _trained_like(build_model("resnet20", num_classes=7, width=4)).eval()
    target = build_model(f"resnet{depth}", num_classes=7, width=4)
    deepen_resnet(target, source)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(target.eval()(x), source(x))
    # Training mode too (batch statistics): the extra blocks add exactly zero to their input.
    assert torch.allclose(target.train()(x), source.train()(x), atol=1e-5)
    # The extra blocks are still trainable: their last BN scale gets a gradient.
    target.train()(x).sum().backward()
    assert target.layers[-1].bn2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("source", "target", "match"),
    [
        ("resnet32", "resnet20", "more than the target's 3"),
        ("vgg16_bn", "resnet32", "only a CIFAR ResNet deepens"),
        ("resnet20", "mobilenetv2", "only a CIFAR ResNet deepens"),
    ],
)
def test_deepen_resnet_refuses(source: str, target: str, match: str) -> None:
    from rlprune.models.grow import deepen_resnet

    with pytest.raises(RLPruneError, match=match):
        deepen_resnet(build_model(target, width=4) if "resnet" in target else build_model(target), build_model(source))


def test_deepen_resnet_width_mismatch() -> None:
    from rlprune.models.grow import deepen_resnet

    with pytest.raises(RLPruneError, match="do not fit the model"):
        deepen_resnet(build_model("resnet32", width=8), build_model("resnet20", width=4))
