"""A diffusers-format Stable Diffusion VAE folder loads behind the engine's model interface."""

from __future__ import annotations

import diffusers
import numpy as np
import torch

from medvae_engine import load_model, reconstruct


def test_diffusers_vae_folder_matches_diffusers(tmp_path, mr_slice):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, scaling_factor=0.18215,
    ).eval()
    vae.save_pretrained(tmp_path / "sdvae")
    model = load_model(tmp_path / "sdvae")
    assert (model.spatial_dims, model.factor, model.latent_channels, model.in_channels) == (2, 2, 4, 3)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(z, vae.encode(x).latent_dist.mean)
        torch.testing.assert_close(model.decode(z), vae.decode(z).sample)
        torch.testing.assert_close(model.project(z), z * 0.18215)
    out = reconstruct(mr_slice, model)
    assert out.shape == mr_slice.shape and np.isfinite(out.array).all()
