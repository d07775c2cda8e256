"""Losses of the MedVAE recipe: perceptual (MS-SSIM or LPIPS from local files), KL, PatchGAN hinge
loss with the adaptive weight, and helpers to apply 2D losses to every slice of a 3D patch.

Images are (B, C, H, W) in [-1, 1]. LPIPS runs on torchvision-format VGG16 or AlexNet ``features``
weights plus the LPIPS v0.1 linear heads, rebuilt here in plain torch (no torchvision needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.perceptual import AlexFeatures
from ..errors import WeightsNotFoundError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WIN, SSIM_SIGMA = 11, 1.5
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
BACKBONE_FILES = {"lpips_vgg": "vgg16-397923af.pth", "lpips_alex": "alexnet-owt-7be5be79.pth"}
VGG_CHANNELS = (64, 128, 256, 512, 512)
ALEX_CHANNELS = (64, 192, 384, 256, 256)
ADAPTIVE_MAX = 1e4


# ---- MS-SSIM (differentiable) -------------------------------------------------------------------

def _gauss_window(size: int, device, dtype) -> torch.Tensor:
    taps = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(taps**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image MS-SSIM of (B, C, H, W) images; small images use fewer scales (weights renormalised)."""
    x, y = x.float(), y.float()
    side = min(x.shape[-2:])
    win = min(SSIM_WIN, side if side % 2 else side - 1)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales > (win - 1):
        scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=x.device)
    weights = weights / weights.sum()
    g = _gauss_window(win, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for level in range(scales):
        mx, my = _blur(x, g), _blur(y, g)
        vx, vy, cxy = _blur(x * x, g) - mx**2, _blur(y * y, g) - my**2, _blur(x * y, g) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        if level == scales - 1:
            cs = cs * (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        values.append(F.relu(cs.flatten(1).mean(1)))
        if level < scales - 1:
            pad = [0, x.shape[-1] % 2, 0, x.shape[-2] % 2]
            x, y = F.avg_pool2d(F.pad(x, pad), 2), F.avg_pool2d(F.pad(y, pad), 2)
    stacked = torch.stack(values, dim=1)
    return torch.prod((stacked + 1e-8) ** weights, dim=1)


class MsSsimLoss(nn.Module):
    """1 - MS-SSIM on images mapped from [-1, 1] to [0, 1]: a structural loss that needs no weights."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - ms_ssim((x + 1) / 2, (y + 1) / 2)


# ---- LPIPS from local files ---------------------------------------------------------------------

class VggFeatures(nn.Module):
    """torchvision's VGG16 ``features`` (same state keys) returning relu1_2 ... relu5_3."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for block, (out, convs) in enumerate(zip(VGG_CHANNELS, (2, 2, 3, 3, 3), strict=True)):
            if block:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU()]
                width = out
        self.features = nn.Sequential(*layers)
        self.stage_ends = (4, 9, 16, 23, 30)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in self.stage_ends:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


class Lpips(nn.Module):
    """LPIPS v0.1 distance per image, frozen; inputs (B, 1|3, H, W) in [-1, 1]."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net = VggFeatures() if kind == "lpips_vgg" else AlexFeatures()
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


def load_lpips(kind: str, weights: str | Path | None, heads: str | Path | None) -> Lpips:
    """LPIPS from a torchvision-format backbone file and the v0.1 heads file, or a clear error."""
    backbone = Path(weights) if weights else default_backbone_path(kind)
    if not backbone.is_file():
        raise WeightsNotFoundError(
            f"{backbone}: {kind} needs the torchvision {BACKBONE_FILES[kind]} backbone weights here "
            "(set loss.perceptual.weights, or use kind msssim which needs no files)")
    if not heads or not Path(heads).is_file():
        raise WeightsNotFoundError(
            f"{heads or '(not set)'}: {kind} needs the LPIPS v0.1 heads file "
            f"({'vgg' if kind == 'lpips_vgg' else 'alex'}.pth) in loss.perceptual.heads")
    model = Lpips(kind)
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    model.net.features.load_state_dict(
        {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
    head_state = torch.load(heads, map_location="cpu", weights_only=True)
    for i, lin in enumerate(model.lins):
        lin.weight.data.copy_(head_state[f"lin{i}.model.1.weight"])
    return model.eval().requires_grad_(False)


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
    """PatchGAN (pix2pix) discriminator: strided 4x4 convs, BatchNorm, LeakyReLU, 1-channel logits."""

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
    """||grad nll|| / (||grad g|| + 1e-4) at the decoder's last trainable layer, clamped, times scale."""
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
