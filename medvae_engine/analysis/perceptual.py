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

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsNotFoundError
from ..models.lpips import Lpips
from ..models.lpips import load_lpips as load_lpips_network
from .metrics import Unavailable

LPIPS_MIN_SIDE = 32


def load_lpips(backbone: str | Path | None = None, heads: str | Path | None = None) -> Lpips | Unavailable:
    """LPIPS-AlexNet from local files (defaults: torch hub cache and the lpips package), or the
    reason it is unavailable naming the missing file."""
    try:
        return load_lpips_network("lpips_alex", backbone, heads)
    except WeightsNotFoundError as e:
        return Unavailable(str(e))


def _as_batch(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    a = np.asarray(images, np.float32)
    if a.ndim == 2:
        a = a[None]
    return torch.from_numpy(a)[:, None]


@torch.no_grad()
def lpips_distance(
    reference: np.ndarray, test: np.ndarray, model: Lpips | Unavailable, batch: int = 8
) -> float | Unavailable:
    """Mean LPIPS over 2D images: a (H,W) pair or stacks (N,H,W) of slices, in [0, 1]."""
    if isinstance(model, Unavailable):
        return model
    r, t = _as_batch(reference), _as_batch(test)
    if min(r.shape[-2:]) < LPIPS_MIN_SIDE:
        return Unavailable(f"LPIPS needs sides >= {LPIPS_MIN_SIDE}, got {tuple(r.shape[-2:])}")
    r, t = r * 2 - 1, t * 2 - 1  # the network takes [-1, 1]
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
