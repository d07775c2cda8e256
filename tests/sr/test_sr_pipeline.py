"""The SR pipeline on real images: geometry, units, batching invariance, progress/cancel, any
autoencoder (our checkpoints, the diffusers SD-VAE, plain pixels)."""

from __future__ import annotations

import threading

import diffusers
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medvae_engine.codec.baselines import PixelCodec
from medvae_engine.codec.spec import load_codec
from medvae_engine.errors import Cancelled, InputError, ModelError
from medvae_engine.imaging.grid import block_affine
from medvae_engine.imaging.io import read_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import AutoencoderKL
from medvae_engine.runtime.progress import run
from medvae_engine.sr.pipeline import (
    SROptions,
    lr_multiple,
    reconstruct_reference_steps,
    super_resolve,
)
from medvae_engine.sr.unet import SRDenoiser, load_sr_model, unet_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mr_slice() -> Volume:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    affine = np.array([[0, 0.3125, 0, -10.0], [0.3125, 0, 0, 5.0], [0, 0, 1.5, 2.0], [0, 0, 0, 1]])
    return Volume(ds.pixel_array.astype(np.float32), affine, "mri")


def random_sr(latent_channels: int, objective: str = "x0", scale: int = 4) -> SRDenoiser:
    torch.manual_seed(0)
    return SRDenoiser(unet_config(latent_channels, "tiny"), objective, card={"scale": scale}).eval()


def small(volume: Volume) -> Volume:
    """A 32x32 centre crop: pixel-space SR works at the full HR size, keep it small."""
    return Volume(volume.array[16:48, 16:48], volume.affine, volume.modality)


def test_finer_block_grid_keeps_voxel_centres_consistent():
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    affine[:3, 3] = rng.normal(size=3) * 10
    s = 4
    out = block_affine(affine, [1 / s, 1 / s])
    lr_centre = affine @ np.array([2.0, 5.0, 1.0, 1.0])
    block = [out @ np.array([2 * s + a, 5 * s + b, 1.0, 1.0]) for a in range(s) for b in range(s)]
    np.testing.assert_allclose(np.mean(block, axis=0), lr_centre, atol=1e-9)
    np.testing.assert_allclose(out[:3, 2], affine[:3, 2])  # the slice axis is untouched
    np.testing.assert_allclose(np.linalg.norm(out[:3, :2], axis=0),
                               np.linalg.norm(affine[:3, :2], axis=0) / s)


def test_lr_multiple():
    assert lr_multiple(4, 4, 8) == 8  # latent_sr UNet (8) with f=4, x4
    assert lr_multiple(8, 4, 8) == 16
    assert lr_multiple(1, 1, 2) == 2


def test_trained_model_on_real_slice(trained_run, tiny_ae_dir, mr_slice):
    sr_model = load_sr_model(trained_run / "sr_model.safetensors")
    ae = load_codec(str(tiny_ae_dir / "tiny_ae.safetensors"))
    seen = []
    out = super_resolve(mr_slice, ae, sr_model, SROptions(steps=3, seed=1), progress=seen.append)
    assert out.shape == (256, 256)
    np.testing.assert_allclose(out.affine, block_affine(mr_slice.affine, [1 / 4, 1 / 4]))
    assert out.modality == "mri" and np.isfinite(out.array).all()
    lo, hi = mr_slice.array.min(), mr_slice.array.max()
    assert out.array.min() >= lo - 1e-3 and out.array.max() <= hi + 1e-3
    assert [p.done for p in seen] == [1, 2, 3] and seen[-1].total == 3
    again = super_resolve(mr_slice, ae, sr_model, SROptions(steps=3, seed=1))
    np.testing.assert_array_equal(out.array, again.array)
    other = super_resolve(mr_slice, ae, sr_model, SROptions(steps=3, seed=2))
    assert not np.array_equal(out.array, other.array)


def test_volume_slicewise_independent_of_batch_size(mni_block, tiny_ae_dir):
    volume = read_volume(mni_block)
    sr_model = random_sr(3, scale=2)
    ae = load_codec(str(tiny_ae_dir / "tiny_ae.safetensors"))
    one = super_resolve(volume, ae, sr_model, SROptions(steps=2, axis=2, batch_size=1))
    three = super_resolve(volume, ae, sr_model, SROptions(steps=2, axis=2, batch_size=3))
    assert one.shape == (80, 96, 3)
    np.testing.assert_allclose(one.array, three.array, atol=1e-4)
    np.testing.assert_allclose(one.affine, block_affine(volume.affine, [1 / 2, 1 / 2]))
    across = super_resolve(volume, ae, sr_model, SROptions(steps=2, axis=0, scale=2))
    assert across.shape == (40, 96, 6)


def test_cancel_stops_the_work(mr_slice):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        super_resolve(small(mr_slice), PixelCodec(), random_sr(1), SROptions(steps=3),
                      cancel=cancel)


def test_pixels_and_sd_vae_work(tmp_path, mr_slice):
    out = super_resolve(small(mr_slice), PixelCodec(), random_sr(1, scale=2), SROptions(steps=2))
    assert out.shape == (64, 64)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, scaling_factor=0.18215).eval()
    vae.save_pretrained(tmp_path / "sdvae")
    sd = load_codec(str(tmp_path / "sdvae"))
    out = super_resolve(mr_slice, sd, random_sr(4), SROptions(steps=2, sampler="latent-sr"))
    assert out.shape == (256, 256) and np.isfinite(out.array).all()


def test_odd_sizes_are_padded_and_cropped(mr_slice):
    odd = Volume(mr_slice.array[:13, :11], mr_slice.affine, "mri")
    out = super_resolve(odd, PixelCodec(), random_sr(1, scale=3), SROptions(steps=1))
    assert out.shape == (39, 33)


def test_mismatches_are_clear_errors(mr_slice):
    with pytest.raises(ModelError, match="3-channel"):
        super_resolve(small(mr_slice), PixelCodec(), random_sr(3), SROptions(steps=1))
    ae3d = AutoencoderKL(3, 1, 1, 32, (1, 2), 1, 1)
    with pytest.raises(ModelError, match="3D"):
        super_resolve(small(mr_slice), ae3d, random_sr(1), SROptions(steps=1))
    with pytest.raises(InputError, match="flow"):
        super_resolve(small(mr_slice), PixelCodec(), random_sr(1), SROptions(sampler="flow", steps=1))
    with pytest.raises(InputError, match="exceeds"):
        super_resolve(small(mr_slice), PixelCodec(), random_sr(1), SROptions(steps=1001))


def test_flow_model_samples_with_flow(mr_slice):
    out = super_resolve(small(mr_slice), PixelCodec(), random_sr(1, "flow", 2),
                        SROptions(sampler="flow", steps=2))
    assert out.shape == (64, 64)


def test_reference_reconstruction(mr_slice, tiny_ae_dir):
    ae = load_codec(str(tiny_ae_dir / "tiny_ae.safetensors"))
    rec = run(reconstruct_reference_steps(mr_slice, ae))
    assert rec.shape == mr_slice.shape
    np.testing.assert_allclose(rec.affine, mr_slice.affine)
    pixels = run(reconstruct_reference_steps(mr_slice, PixelCodec()))
    np.testing.assert_allclose(pixels.array, mr_slice.array, rtol=1e-5, atol=1e-3)


def test_sr_does_not_depend_on_what_the_autoencoder_ran_before(mr_slice):
    """bf16 SR gives the same image with a fresh autoencoder and with one that a bf16
    reconstruction ran on first (bf16 runs on a CPU use the channels-last layout)."""
    from medvae_engine.codec.pipeline import CodecOptions, reconstruct
    from medvae_engine.models import load_model

    autoencoder, fresh = load_model("starter_4_3_2d"), load_model("starter_4_3_2d")
    sr, image = random_sr(3), small(mr_slice)
    options = SROptions(sampler="ddim", steps=3, precision="bf16")
    expected = super_resolve(image, fresh, sr, options).array
    reconstruct(image, autoencoder, CodecOptions(precision="bf16"))
    np.testing.assert_array_equal(super_resolve(image, autoencoder, sr, options).array, expected)
