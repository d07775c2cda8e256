"""MONAI classifier factory: ResNet, SEResNet and DenseNet families at selectable sizes, 2D or 3D.

The same architecture runs on images and on latents; only ``in_channels`` (latent channels) and the
input size change. Inputs smaller than ``SMALL_INPUT`` per side get a "small" stem (stride-1 first
convolution, no max pool) so that an 8x8 latent is not pooled away before the first block.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError

FAMILIES = {
    "resnet": (10, 18, 34, 50, 101, 152, 200),
    "seresnet": (50, 101, 152),
    "densenet": (121, 169, 201, 264),
}
SMALL_INPUT = 32
STEMS = ("auto", "standard", "small")


def architectures() -> list[str]:
    """Every selectable name, e.g. resnet18, seresnet152, densenet121."""
    return [f"{family}{size}" for family, sizes in FAMILIES.items() for size in sizes]


def parse_architecture(arch: str) -> tuple[str, int]:
    """'seresnet152' -> ('seresnet', 152); ModelError for names outside FAMILIES."""
    family = arch.rstrip("0123456789").lower()
    size = arch[len(family):]
    if family not in FAMILIES or not size.isdigit() or int(size) not in FAMILIES[family]:
        raise ModelError(f"unknown classifier {arch!r}; choose from {', '.join(architectures())}")
    return family, int(size)


def build_classifier(
    arch: str,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    input_shape: tuple[int, ...],
    stem: str = "auto",
) -> nn.Module:
    """A randomly initialised MONAI classifier giving ``num_classes`` logits for ``input_shape``."""
    from monai.networks import nets  # slow to import: only this path needs it

    family, size = parse_architecture(arch)
    if stem not in STEMS:
        raise ModelError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")
    if family == "resnet":
        net = getattr(nets, f"resnet{size}")(
            spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes
        )
    elif family == "seresnet":
        net = getattr(nets, f"SEResNet{size}")(
            spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes
        )
    else:
        net = getattr(nets, f"DenseNet{size}")(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes
        )
    if stem == "small" or (stem == "auto" and min(input_shape) < SMALL_INPUT):
        _small_stem(net)
    _check_runs(net, arch, in_channels, input_shape)
    return net


def _small_stem(net: nn.Module) -> None:
    """Stride 1 in the first convolution and no first max pool: keeps small inputs resolved."""
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))
    conv.stride = (1,) * len(conv.stride)
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d | nn.MaxPool3d):
                setattr(parent, name, nn.Identity())
                return


def _check_runs(net: nn.Module, arch: str, in_channels: int, input_shape: tuple[int, ...]) -> None:
    """Fail early, with advice, when the input is too small for the network's pooling."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, in_channels, *input_shape))
    except RuntimeError as e:
        raise ModelError(
            f"{arch}: input of shape {tuple(input_shape)} is too small for this network ({e}); "
            "use a ResNet, --stem small or larger images"
        ) from None
    finally:
        net.train(was_training)
