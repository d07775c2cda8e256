"""A learned latent refiner: a few corrections of the encoder's latent, each computed from where
the decoder is wrong, so that encoding gets most of what gradient refinement (codec/refine.py)
gives in 15 or more decoder passes from 3 or 4.

Each step reads, at latent resolution, the latent z, the gradient of the squared reconstruction
error with respect to z (one decoder pass forward and back), its sign, and the residual D(z) - x
block-averaged by the factor. It moves z by a learned size against the gradient's sign (what
Adam's first step on the latent does) plus the output of a small network. This is a learned
optimiser unrolled for a fixed number of steps (Andrychowicz et al. 2016; iterative amortised
inference, Marino et al. 2018). The networks are plain convolutions without normalisation, so a
voxel's correction depends only on its neighbourhood; their output layers start at zero, so a new
refiner takes plain sign steps of SIGN_STEP until it is trained.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

REFINER_WIDTH = 48
REFINER_BLOCKS = 3
INPUT_GAIN = 20.0  # gradients and residuals are ~1e-2 on images in [-1, 1]: lifted to unit scale
SIGN_STEP = 0.015  # the starting step size: three such steps take starter_4_1_3d_l2's margin over
# interpolation from +0.57 to +0.86 dB (fp32, its two held-out volumes)


def _conv(spatial_dims: int, cin: int, cout: int) -> nn.Module:
    return (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(cin, cout, 3, padding=1)


class RefinerBlock(nn.Module):
    """swish-conv-swish-conv plus the input."""

    def __init__(self, spatial_dims: int, width: int):
        super().__init__()
        self.conv1 = _conv(spatial_dims, width, width)
        self.conv2 = _conv(spatial_dims, width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(F.silu(self.conv1(F.silu(h))))


class RefinerStep(nn.Module):
    """(z, gradient, its sign, block-mean residual) -> correction of z: a step of learned size
    against the gradient's sign (what Adam's first step on the latent is) plus what the network
    adds to it."""

    def __init__(self, spatial_dims: int, latent_channels: int, width: int, blocks: int):
        super().__init__()
        self.conv_in = _conv(spatial_dims, 3 * latent_channels + 1, width)
        self.block = nn.Sequential(*[RefinerBlock(spatial_dims, width) for _ in range(blocks)])
        self.conv_out = _conv(spatial_dims, width, latent_channels)
        self.sign_step = nn.Parameter(torch.tensor(SIGN_STEP))
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, features: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        learned = self.conv_out(F.silu(self.block(self.conv_in(features)))) / INPUT_GAIN
        return learned.float() - self.sign_step.float() * sign


class LatentRefiner(nn.Module):
    """``steps`` refiner steps, each with its own weights."""

    def __init__(self, spatial_dims: int, latent_channels: int, factor: int, steps: int,
                 width: int = REFINER_WIDTH, blocks: int = REFINER_BLOCKS):
        super().__init__()
        self.factor = factor
        self.step = nn.ModuleList(
            [RefinerStep(spatial_dims, latent_channels, width, blocks) for _ in range(steps)])

    def forward(self, decode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                z: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The refined latent (float32) of image ``x`` (B, C, ...) from the encoder's ``z``, fitting
        the voxels where ``weight`` (B, 1, ...) is 1 (0: the codec's padding; default all). In eval
        mode, per batch item the iterate with the smallest error (one more decoder pass), so a
        latent is never made worse; in training, the last."""
        target = x.float().mean(1, keepdim=True)
        weight = torch.ones_like(target) if weight is None else weight.to(target)
        z = z.float()
        iterates, errors = [], []
        for step in self.step:
            gradient, residual, error = self.error_signals(decode, target, z, weight)
            iterates.append(z)
            errors.append(error)
            sign = torch.sign(gradient)
            features = torch.cat([z, INPUT_GAIN * gradient, sign, INPUT_GAIN * residual], 1)
            z = z + step(features.to(step.conv_in.weight.dtype), sign)
        if self.training:
            return z
        with torch.no_grad():
            errors.append(((decode(z).float().mean(1, keepdim=True) - target) * weight)
                          .pow(2).flatten(1).sum(1))
        iterates.append(z)
        best = torch.stack(errors).argmin(0)  # (B,) index of each item's best iterate
        return torch.stack(iterates)[best, torch.arange(len(best), device=best.device)]

    def error_signals(self, decode, target: torch.Tensor, z: torch.Tensor, weight: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gradient of the summed squared error with respect to z, per image voxel a latent
        voxel covers; the residual D(z) - x block-averaged to the latent grid; and the summed
        squared error of each batch item."""
        leaf = z.detach().requires_grad_(True)
        with torch.enable_grad():
            residual = (decode(leaf).float().mean(1, keepdim=True) - target) * weight
            squared = residual.pow(2).flatten(1).sum(1)
            (gradient,) = torch.autograd.grad(squared.sum(), leaf)
        spread = self.factor ** (z.dim() - 2)
        pool = F.avg_pool2d if z.dim() == 4 else F.avg_pool3d
        return gradient / (2 * spread), pool(residual.detach(), self.factor), squared.detach()
