"""Frozen image encoders for the embedding-consistency losses (pluggable).

Every embedder receives model-space images (B, C, H, W) in [-1, 1]; the wrapper averages the
channels, repeats them to RGB, maps to [0, 1], resizes to ``size`` x ``size`` and (for BiomedCLIP)
applies the CLIP normalisation, then returns flat (B, D) embeddings. Kinds: a TorchScript file, a
torch module built by an importable factory, or BiomedCLIP loaded through open_clip from a local
folder. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError, WeightsNotFoundError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEmbedder(nn.Module):
    """Frozen ``net`` behind the shared input preparation; forward gives (B, D) embeddings."""

    def __init__(self, net: nn.Module, size: int, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> ImageEmbedder:
        return super().train(False)  # always frozen, BatchNorm/dropout included

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float().mean(1, keepdim=True) + 1) / 2).expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std).flatten(1).float()


def build_embedder(kind: str, path: str | Path | None, target: str | None,
                   size: int) -> ImageEmbedder | None:
    """The configured frozen image encoder, or None for kind ``none``."""
    if kind == "none":
        return None
    if kind == "torchscript":
        file = _existing(path, "TorchScript embedder file")
        try:
            net = torch.jit.load(str(file), map_location="cpu")
        except Exception as e:
            reason = str(e)[:120]
            raise ModelError(f"{file}: not a loadable TorchScript module ({reason})") from None
        return ImageEmbedder(net, size)
    if kind == "module":
        return ImageEmbedder(_from_factory(target), size)
    if kind == "biomedclip":
        return ImageEmbedder(_biomedclip(_existing(path, "BiomedCLIP folder")), size,
                             CLIP_MEAN, CLIP_STD)
    raise ModelError(f"unknown embedder kind {kind!r}")


def _existing(path: str | Path | None, what: str) -> Path:
    if not path or not Path(path).exists():
        raise WeightsNotFoundError(f"{path or '(embedder.path not set)'}: {what} not found")
    return Path(path)


def _from_factory(target: str | None) -> nn.Module:
    """``package.module:callable`` -> the nn.Module it returns."""
    if not target or ":" not in target:
        raise ModelError(f"embedder.target must be 'package.module:factory', got {target!r}")
    module_name, _, attr = target.partition(":")
    try:
        net = getattr(importlib.import_module(module_name), attr)()
    except (ImportError, AttributeError) as e:
        raise ModelError(f"{target}: cannot build the embedder ({e})") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"{target}: the factory did not return a torch module")
    return net


class _ClipImageTower(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x)


def _biomedclip(folder: Path) -> nn.Module:
    """BiomedCLIP's image tower from a local folder (open_clip_config.json + weights)."""
    try:
        import open_clip  # optional embedder
    except ImportError:
        raise ModelError("embedder kind biomedclip needs the open_clip_torch package") from None
    try:
        model, _ = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    except Exception as e:
        reason = str(e)[:160]
        raise ModelError(f"{folder}: cannot load BiomedCLIP with open_clip ({reason})") from None
    return _ClipImageTower(model)
