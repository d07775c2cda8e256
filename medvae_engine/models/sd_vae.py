"""The Stable Diffusion VAE (diffusers format, local folder) behind the engine's model interface.

It serves as the natural-image baseline: 3-channel input, 4 latent channels, f=8. Latents are the
unscaled posterior mean, as for MedVAE; ``project`` multiplies by the VAE's scaling factor (the
latent that Stable Diffusion's UNet sees).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError


class DiffusersVAE(nn.Module):
    """Wraps diffusers.AutoencoderKL with encode / project / decode and the engine attributes."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.spatial_dims = 2
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.out_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 1.0))
        self.config = {"diffusers": dict(cfg)}

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        dist = self.vae.encode(x).latent_dist
        if not sample:
            return dist.mean
        noise = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype)
        return dist.mean + dist.std * noise.to(dist.mean.device)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def load_diffusers_vae(folder: Path) -> DiffusersVAE:
    """Load a diffusers AutoencoderKL from a local folder (config.json + safetensors weights)."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a diffusers VAE folder (config.json missing)")
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL  # heavy: imported on use

    try:
        vae = DiffusersAutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ModelError(
            f"{folder}: cannot load the diffusers VAE ({str(e).splitlines()[0]})"
        ) from None
    return DiffusersVAE(vae)
