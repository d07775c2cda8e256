"""Loading published latent-sr Lightning checkpoints: a synthetic checkpoint in their key layout
(``model.`` prefix, ``alphas`` table, LitEma shadows, hyper_parameters) must load and sample
exactly like their sampler does on the raw diffusers UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from medvae_engine.errors import ModelError
from medvae_engine.sr.compat import load_latent_sr_checkpoint
from medvae_engine.sr.pipeline import sample_latents_steps
from medvae_engine.sr.samplers import run_sampler
from medvae_engine.sr.schedules import latent_sr_table
from medvae_engine.sr.unet import load_sr_model

torch.set_num_threads(1)

HPARAMS = {"learning_rate": 1e-4, "timesteps": 1000, "hr_channels": 3, "hr_size": 16,
           "lr_channels": 3, "lr_size": 4, "beta_schedule": "cosine", "loss_type": "l1",
           "use_ema": True, "base_channels": 32, "channel_mult": (1, 2),
           "attention_resolutions": (8,), "layers_per_block": 1, "zlr_init": False}


def published_unet(seed: int) -> UNet2DModel:
    """Their UNet: 2C in, C out, attention blocks at the 8x8 level of a 16x16 latent."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D",
                                                                      "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(path, raw UNet, EMA UNet, stored table) of a synthetic published checkpoint."""
    raw, ema = published_unet(0), published_unet(1)
    table = latent_sr_table() ** 1.01  # distinguishable from our own table: must be read back
    sd = {f"model.{k}": v for k, v in raw.state_dict().items()}
    sd.update({f"model_ema.{k.replace('.', '')}": v for k, v in ema.named_parameters()})
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    sd["alphas"] = table
    ckpt = {"epoch": 99, "global_step": 1234, "pytorch-lightning_version": "2.1.0",
            "state_dict": sd, "hyper_parameters": dict(HPARAMS), "optimizer_states": [],
            "lr_schedulers": []}
    path = tmp_path_factory.mktemp("latent_sr") / "epoch=99-step=1234.ckpt"
    torch.save(ckpt, path)
    return path, raw, ema, table


def test_loads_published_layout_with_ema_and_table(checkpoint):
    path, raw, ema, table = checkpoint
    model = load_sr_model(path)  # dispatches .ckpt to the compat loader
    assert model.objective == "x0" and model.convention == "flipped"
    assert model.unet_kwargs["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"]
    assert model.unet_kwargs["up_block_types"] == ["AttnUpBlock2D", "UpBlock2D"]
    for k, v in ema.state_dict().items():
        assert torch.equal(model.unet.state_dict()[k], v), k
    assert torch.equal(model.latent_sr_alphas, table)
    plain = load_latent_sr_checkpoint(path, use_ema=False)
    for k, v in raw.state_dict().items():
        assert torch.equal(plain.unet.state_dict()[k], v), k
    # flipped timesteps: our DDPM t is their index 999 - t
    z, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = plain(z, cond, torch.tensor(10))
        theirs = raw(torch.cat([z, cond], 1), torch.tensor([989, 989])).sample
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("steps", [1, 4])
def test_latent_sr_sampler_matches_their_loop(checkpoint, steps):
    path, _, ema, table = checkpoint
    model = load_sr_model(path)
    cond = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = run_sampler(sample_latents_steps(
            model, cond, "latent-sr", steps, [torch.Generator().manual_seed(s) for s in (7, 8)]))
        # their procedure, written out in their index space on the raw UNet
        z = 0.5 * torch.stack([torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(s))
                               for s in (7, 8)])
        for i in range(steps - 1):
            x0 = ema(torch.cat([z, cond], 1), torch.full((2,), i)).sample
            a, a1 = table[i], table[i + 1]
            noise = (z - a.sqrt() * x0) / ((1 - a).sqrt() + 1e-4)
            z = a1.sqrt() * x0 + (1 - a1).sqrt() * noise + (z - a.sqrt() * x0 - (1 - a).sqrt()
                                                             * noise)
        expected = ema(torch.cat([z, cond], 1), torch.full((2,), steps - 1)).sample
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


class NotAllowed:
    """Pickled objects must be refused by weights_only loading."""


def test_bad_checkpoints_are_model_errors(tmp_path, checkpoint):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"model.conv_in.weight": torch.zeros(1)}, "x": NotAllowed()}, path)
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_sr_model(path)
    other = tmp_path / "ae.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, other)
    with pytest.raises(ModelError, match="not a latent-sr UNet"):
        load_sr_model(other)
    linear = tmp_path / "linear.ckpt"
    ckpt = torch.load(checkpoint[0], weights_only=True)
    ckpt["hyper_parameters"]["beta_schedule"] = "linear"
    torch.save(ckpt, linear)
    with pytest.raises(ModelError, match="cosine"):
        load_sr_model(linear)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint[0].read_bytes()[:1000])
    with pytest.raises(ModelError):
        load_sr_model(truncated)
