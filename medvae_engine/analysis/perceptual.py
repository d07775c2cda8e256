"""Perceptual metrics: LPIPS (AlexNet, v0.1) and FID feature statistics, from local weights only.

LPIPS: grayscale [0, 1] images are repeated to 3 channels, mapped to [-1, 1], shifted and scaled
per channel (LPIPS v0.1 constants), passed through torchvision-layout AlexNet features; the five
ReLU outputs are unit-normalised along channels, their squared differences weighted by the learned
1x1 "lin" heads, averaged over space and summed. The backbone comes from a torchvision AlexNet
file (default ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``) and the heads from the
lpips package's ``weights/v0.1/alex.pth``; both are read with ``torch.load(weights_only=True)``.
Torchvision is not needed. When a file is missing the metric is `Unavailable` naming it.

FID: features of both image sets come from a user-given extractor (a TorchScript file or any torch
module, e.g. Inception-v3 pool features, 2048-d); mean and covariance and the Frechet distance
are computed here.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import Unavailable

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
ALEX_CHANNELS = (64, 192, 384, 256, 256)
LPIPS_MIN_SIDE = 32


def default_alexnet_path() -> Path:
    """Where torch.hub keeps torchvision's AlexNet weights ($TORCH_HOME or ~/.cache/torch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub" / "checkpoints" / ALEXNET_FILE


def default_lpips_heads_path() -> Path | None:
    """The lin heads bundled with the lpips package (found without importing it), or None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "alex.pth"


class AlexFeatures(nn.Module):
    """torchvision's AlexNet ``features`` as five stages ending at each ReLU (same state keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        self.stage_ends = (2, 5, 8, 10, 12)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in self.stage_ends:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


class LpipsAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone; forward takes (B,1|3,H,W) in [0, 1], returns (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ALEX_CHANNELS)
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
        return ((x * 2 - 1) - self.shift) / self.scale

    def load_heads(self, state: dict[str, torch.Tensor]) -> None:
        """Load lpips' ``lin{i}.model.1.weight`` tensors into the heads."""
        for i, lin in enumerate(self.lins):
            lin.weight.data.copy_(state[f"lin{i}.model.1.weight"])


def load_lpips(
    backbone: str | Path | None = None, heads: str | Path | None = None
) -> LpipsAlex | Unavailable:
    """LPIPS-AlexNet from local files (defaults: torch hub cache and the lpips package)."""
    backbone = Path(backbone) if backbone else default_alexnet_path()
    heads = Path(heads) if heads else default_lpips_heads_path()
    if heads is None:
        return Unavailable("LPIPS heads not found: the lpips package is not installed "
                           "(or pass the v0.1 alex.pth heads file)")
    for what, path in (("AlexNet backbone weights", backbone), ("LPIPS heads", heads)):
        if not path.is_file():
            return Unavailable(f"{what} not found: {path}")
    model = LpipsAlex()
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items()
                if k.startswith("features.")}
    model.net.features.load_state_dict(features)
    model.load_heads(torch.load(heads, map_location="cpu", weights_only=True))
    return model.eval()


def _as_batch(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    a = np.asarray(images, np.float32)
    if a.ndim == 2:
        a = a[None]
    return torch.from_numpy(a)[:, None]


@torch.no_grad()
def lpips_distance(
    reference: np.ndarray, test: np.ndarray, model: LpipsAlex | Unavailable, batch: int = 8
) -> float | Unavailable:
    """Mean LPIPS over 2D images: a (H,W) pair or stacks (N,H,W) of slices, in [0, 1]."""
    if isinstance(model, Unavailable):
        return model
    r, t = _as_batch(reference), _as_batch(test)
    if min(r.shape[-2:]) < LPIPS_MIN_SIDE:
        return Unavailable(f"LPIPS needs sides >= {LPIPS_MIN_SIDE}, got {tuple(r.shape[-2:])}")
    values = [model(r[i : i + batch], t[i : i + batch]) for i in range(0, r.shape[0], batch)]
    return float(torch.cat(values).mean())


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean vector and covariance (ddof 1) of (N, D) features, in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    mu = f.mean(axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2) for Gaussians N(mu, S).

    tr((S1 S2)^1/2) is the sum of square roots of the eigenvalues of S1^1/2 S2 S1^1/2, a symmetric
    PSD matrix, which avoids the complex round-off of a general matrix square root.
    """
    root1 = _psd_sqrt(np.asarray(sigma1, np.float64))
    inner = root1 @ np.asarray(sigma2, np.float64) @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_root = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def load_feature_extractor(source: str | Path | nn.Module | None) -> nn.Module | Unavailable:
    """A torch module mapping (B,3,S,S) images in [0, 1] to (B, D) features, or Unavailable."""
    if source is None:
        return Unavailable("FID needs a feature extractor (TorchScript Inception file); none given")
    if isinstance(source, nn.Module):
        return source.eval()
    path = Path(source)
    if not path.is_file():
        return Unavailable(f"FID feature extractor not found: {path}")
    return torch.jit.load(str(path), map_location="cpu").eval()


@torch.no_grad()
def extract_features(
    images: Sequence[np.ndarray], extractor: nn.Module, size: int = 299, batch: int = 16
) -> np.ndarray:
    """(N, D) features of 2D [0, 1] images, each repeated to 3 channels and resized (bilinear)."""
    feats = []
    for i in range(0, len(images), batch):
        chunk = []
        for img in images[i : i + batch]:
            t = torch.as_tensor(np.asarray(img, np.float32))[None, None]
            chunk.append(F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False))
        x = torch.cat(chunk).expand(-1, 3, -1, -1)
        feats.append(extractor(x).reshape(x.shape[0], -1).double().numpy())
    return np.concatenate(feats)


def fid(
    reference_images: Sequence[np.ndarray],
    test_images: Sequence[np.ndarray],
    extractor: nn.Module | Unavailable,
    size: int = 299,
) -> float | Unavailable:
    """Frechet distance between the feature distributions of two sets of 2D [0, 1] images."""
    if isinstance(extractor, Unavailable):
        return extractor
    if min(len(reference_images), len(test_images)) < 2:
        return Unavailable("FID needs at least two images per set")
    fr = extract_features(reference_images, extractor, size)
    ft = extract_features(test_images, extractor, size)
    return frechet_distance(*feature_statistics(fr), *feature_statistics(ft))
