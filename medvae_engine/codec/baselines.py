"""Interpolation baselines behind the model interface: downsample by f per side, upsample back.

They plug into the codec (``encode``/``decode``/``reconstruct``) and every comparison exactly like an
autoencoder: the "latent" is the downsampled image, so the storage ratio is f^2 (2D) or f^3 (3D).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..errors import ModelError

PIXELS = "pixels"
BASELINES = {
    "nearest": (2, 3),
    "bilinear": (2,),
    "bicubic": (2,),
    "trilinear": (3,),
    "spline": (3,),  # cubic B-spline (scipy), the 3D "cubic" baseline
}


class InterpolationCodec(nn.Module):
    """Area-style antialiased downsampling by ``factor``, then ``mode`` interpolation back up."""

    def __init__(self, mode: str, spatial_dims: int, factor: int):
        super().__init__()
        self.mode = mode
        self.name = mode
        self.spatial_dims = spatial_dims
        self.factor = factor
        self.in_channels = 1
        self.latent_channels = 1
        self.weights_path = None

    def encode(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        x = x.float()
        if self.mode == "nearest":  # keep one voxel per block (the classic nearest decimation)
            offset = self.factor // 2
            idx = (slice(None), slice(None)) + (
                slice(offset, None, self.factor),
            ) * self.spatial_dims
            return x[idx]
        if self.spatial_dims == 2:
            return F.interpolate(x, scale_factor=1 / self.factor, mode="bicubic", antialias=True)
        return F.avg_pool3d(x, self.factor)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        size = tuple(s * self.factor for s in z.shape[2:])
        if self.mode == "nearest":
            return F.interpolate(z, size=size, mode="nearest")
        if self.mode in ("bilinear", "bicubic", "trilinear"):
            return F.interpolate(z, size=size, mode=self.mode, align_corners=False)
        return torch.from_numpy(_spline_zoom(z.cpu().numpy(), self.factor)).to(z.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def _spline_zoom(z: np.ndarray, factor: int) -> np.ndarray:
    """Cubic B-spline upsampling of (B, C, *spatial) with pixel centres aligned like align_corners=False."""
    out = []
    for b in range(z.shape[0]):
        chans = []
        for c in range(z.shape[1]):
            coords = np.meshgrid(
                *[(np.arange(n * factor) + 0.5) / factor - 0.5 for n in z.shape[2:]], indexing="ij"
            )
            chans.append(ndimage.map_coordinates(z[b, c], coords, order=3, mode="nearest"))
        out.append(np.stack(chans))
    return np.stack(out).astype(np.float32)


def get_baseline(mode: str, spatial_dims: int = 2, factor: int = 4) -> InterpolationCodec:
    """An interpolation codec; ModelError for unknown modes or modes not defined in this dimension."""
    if mode not in BASELINES or spatial_dims not in BASELINES[mode]:
        valid = [m for m, d in BASELINES.items() if spatial_dims in d]
        raise ModelError(
            f"unknown {spatial_dims}D baseline {mode!r}; choose from {', '.join(valid)}"
        )
    return InterpolationCodec(mode, spatial_dims, factor)


class PixelCodec(nn.Module):
    """Plain pixels behind the autoencoder interface: factor 1, one channel, encode = decode = id."""

    def __init__(self, spatial_dims: int = 2):
        super().__init__()
        self.name = PIXELS
        self.spatial_dims = spatial_dims
        self.factor = 1
        self.in_channels = 1
        self.latent_channels = 1
        self.weights_path = None

    def encode(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        return x.float()

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.float()
