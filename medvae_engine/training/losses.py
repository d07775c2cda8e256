"""Losses of the MedVAE recipe: perceptual (MS-SSIM or LPIPS from local files), KL, PatchGAN hinge
loss with the adaptive weight, and helpers to apply 2D losses to every slice of a 3D patch.

Images are (B, C, H, W) in [-1, 1]. LPIPS runs on torchvision-format VGG16 or AlexNet ``features``
weights plus the LPIPS v0.1 linear heads, rebuilt here in plain torch (no torchvision needed).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.msssim import ms_ssim
from ..models.lpips import load_lpips

ADAPTIVE_MAX = 1e4


# ---- MS-SSIM (the metric's implementation) ----------------------------------------------------

class MsSsimLoss(nn.Module):
    """1 - MS-SSIM of images mapped from [-1, 1] to [0, 1]: a structural loss needing no weights
    (``analysis.msssim``, the implementation the MS-SSIM metric uses)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - ms_ssim((x + 1) / 2, (y + 1) / 2)


# ---- LPIPS from local files ---------------------------------------------------------------------

def build_perceptual(kind: str, weights: str | Path | None = None,
                     heads: str | Path | None = None) -> nn.Module | None:
    """The configured perceptual loss module (per-image values), or None for kind ``none``."""
    if kind == "none":
        return None
    if kind == "msssim":
        return MsSsimLoss()
    return load_lpips(kind, weights, heads)


# ---- KL and adversarial -------------------------------------------------------------------------

def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent elements, averaged over the batch."""
    kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float())
    return kl.flatten(1).sum(1).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix) discriminator: strided 4x4 convs, BatchNorm, LeakyReLU, patch logits."""

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, layers + 1):
            out = channels * min(2**n, 8)
            mods += [nn.Conv2d(width, out, 4, 2 if n < layers else 1, 1, bias=False),
                     nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            width = out
        mods.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss 0.5 * (E relu(1 - D(x)) + E relu(1 + D(G(z))))."""
    return 0.5 * (F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """||grad nll|| / (||grad g|| + 1e-4) at the decoder's last trainable layer, clamped, scaled."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = g_nll.float().norm() / (g_adv.float().norm() + 1e-4)
    return weight.clamp(0.0, ADAPTIVE_MAX).detach() * scale


# ---- 3D helpers ---------------------------------------------------------------------------------

def slices_along(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, C, D, H, W) -> every 2D slice along spatial ``axis`` (0, 1 or 2) as (B*n, C, a, b)."""
    moved = x.movedim(2 + axis, 1)
    return moved.reshape(-1, x.shape[1], *moved.shape[3:])


def all_slices(x: torch.Tensor) -> list[torch.Tensor]:
    """2D slice stacks along the three axes of a 3D batch; a 2D batch is returned as is."""
    return [x] if x.ndim == 4 else [slices_along(x, a) for a in range(3)]
