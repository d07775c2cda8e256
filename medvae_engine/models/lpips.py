"""LPIPS v0.1 networks rebuilt in plain torch, loaded from local files (no torchvision, no download).

One implementation serves the perceptual training loss and the LPIPS metric. The backbone reads
torchvision-format VGG16 or AlexNet ``features`` weights (torch hub's file names); the linear
heads read the ``lin{i}.model.1.weight`` tensors of the lpips package's v0.1 files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsNotFoundError

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
BACKBONE_FILES = {"lpips_vgg": "vgg16-397923af.pth", "lpips_alex": "alexnet-owt-7be5be79.pth"}
HEAD_FILES = {"lpips_vgg": "vgg.pth", "lpips_alex": "alex.pth"}
VGG_CHANNELS = (64, 128, 256, 512, 512)
ALEX_CHANNELS = (64, 192, 384, 256, 256)


class StagedFeatures(nn.Module):
    """A torchvision ``features`` stack (same state keys) returning the output of each stage."""

    def __init__(self, layers: list[nn.Module], stage_ends: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.stage_ends = stage_ends

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in self.stage_ends:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


def alex_features() -> StagedFeatures:
    """AlexNet ``features`` cut after relu1 ... relu5."""
    layers = [
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    ]
    return StagedFeatures(layers, (2, 5, 8, 10, 12))


def vgg_features() -> StagedFeatures:
    """VGG16 ``features`` cut after relu1_2 ... relu5_3."""
    layers: list[nn.Module] = []
    width = 3
    for block, (out, convs) in enumerate(zip(VGG_CHANNELS, (2, 2, 3, 3, 3), strict=True)):
        if block:
            layers.append(nn.MaxPool2d(2, 2))
        for _ in range(convs):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU()]
            width = out
    return StagedFeatures(layers, (4, 9, 16, 23, 30))


class Lpips(nn.Module):
    """LPIPS v0.1 distance per image; inputs (B, 1|3, H, W) in [-1, 1], output (B,)."""

    def __init__(self, kind: str = "lpips_alex") -> None:
        super().__init__()
        self.net = vgg_features() if kind == "lpips_vgg" else alex_features()
        channels = VGG_CHANNELS if kind == "lpips_vgg" else ALEX_CHANNELS
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(self._prepare(x)), self.net(self._prepare(y))
        total = 0
        for lin, a, b in zip(self.lins, fx, fy, strict=True):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))
        return total[:, 0]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.shift) / self.scale


def default_backbone_path(kind: str) -> Path:
    """torch hub's checkpoint cache, where torchvision keeps downloaded ImageNet weights."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints" / BACKBONE_FILES[kind]


def default_heads_path(kind: str) -> Path | None:
    """The v0.1 heads inside an installed lpips package (found without importing it), or None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / HEAD_FILES[kind]


def load_lpips(kind: str, weights: str | Path | None = None, heads: str | Path | None = None) -> Lpips:
    """Frozen LPIPS from a backbone file and a heads file; WeightsNotFoundError naming what is missing."""
    backbone = Path(weights) if weights else default_backbone_path(kind)
    heads = heads or default_heads_path(kind)
    if not backbone.is_file():
        raise WeightsNotFoundError(
            f"{backbone}: {kind} needs the torchvision {BACKBONE_FILES[kind]} backbone weights here "
            "(pass their path, or use a perceptual kind that needs no files such as msssim)")
    if not heads or not Path(heads).is_file():
        raise WeightsNotFoundError(
            f"{heads or '(not set)'}: {kind} needs the LPIPS v0.1 heads file {HEAD_FILES[kind]} "
            "(pass its path or install the lpips package)")
    model = Lpips(kind)
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    model.net.features.load_state_dict(
        {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
    head_state = torch.load(heads, map_location="cpu", weights_only=True)
    for i, lin in enumerate(model.lins):
        lin.weight.data.copy_(head_state[f"lin{i}.model.1.weight"])
    return model.eval().requires_grad_(False)
