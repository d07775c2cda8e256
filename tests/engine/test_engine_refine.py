"""Encoder-side latent refinement (codec/refine.py): it finds the least-squares latent where that
is known, improves real reconstructions, never returns a worse latent, and refuses what it cannot
run with a one-line error."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import keys_upsample_1d, mni_block, without_refiner
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from medvae_engine.cli import main
from medvae_engine.codec.estimate import plan_flops
from medvae_engine.codec.pipeline import CodecOptions, encode, reconstruct
from medvae_engine.codec.refine import refine_latent
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import load_model
from medvae_engine.models.autoencoder import AutoencoderKL
from medvae_engine.models.checkpoints import save_model


def test_a_linear_decoder_is_refined_to_the_least_squares_latent():
    """A fresh 3D shortcut model decodes as tricubic upsampling of its latent, a linear map U:
    refinement must reach the latent minimising |U z - x|^2, solved here with numpy's lstsq on the
    real MNI152 template from the Keys kernel written out in the tests."""
    x = mni_block(16)
    torch.manual_seed(0)
    model = AutoencoderKL(3, 1, 1, 8, (1, 2, 4), 1, 1, norm_groups=4, shortcut=True).eval()
    u1 = keys_upsample_1d(np.eye(4), 4, axis=0)  # (16, 4): one axis of the upsampling
    u = np.kron(np.kron(u1, u1), u1)  # (16^3, 4^3), C order like x.ravel()
    z_ls = np.linalg.lstsq(u, x.ravel(), rcond=None)[0]
    mse_ls = np.mean((u @ z_ls - x.ravel()) ** 2)
    xt = torch.from_numpy(x).float()[None, None]
    with torch.no_grad():
        z0 = model.encode(xt)
    mse_block_mean = np.mean((u @ z0.double().numpy().ravel() - x.ravel()) ** 2)
    z = refine_latent(model, xt, z0, steps=100, lr=0.05)
    with torch.no_grad():
        mse = torch.mean((model.decode(z) - xt) ** 2).item()
    assert mse_ls < 0.95 * mse_block_mean  # the least-squares latent is better than block means ...
    assert mse < mse_ls * 1.001  # ... and refinement gets there (measured: 1.000001)
    np.testing.assert_allclose(z.double().numpy().ravel(), z_ls, atol=5e-3)  # measured: 9e-4


def test_refinement_raises_psnr_of_the_3d_starter_on_a_real_volume_and_keeps_the_latent_size():
    model = without_refiner(load_model("starter_4_1_3d"))
    volume = Volume(mni_block(32).astype(np.float32), np.eye(4), "mri")
    plain, refined = (encode(volume, model, CodecOptions(refine=n)) for n in (0, 10))
    assert refined.array.shape == plain.array.shape

    def error(n):
        out = reconstruct(volume, model, CodecOptions(refine=n)).array
        return float(np.mean((out - volume.array) ** 2))

    assert error(10) < 0.9 * error(0)  # measured: 0.75x on this block


def test_refinement_never_returns_a_worse_latent():
    """A step far too large makes every iterate worse: the encoder's latent comes back as it was."""
    model = load_model("starter_4_1_3d")
    x = torch.from_numpy(mni_block(16)).float()[None, None]
    with torch.no_grad():
        z0 = model.encode(x)
    torch.testing.assert_close(refine_latent(model, x, z0, steps=3, lr=50.0), z0, rtol=0, atol=0)


def test_the_time_estimate_counts_the_refinement_passes():
    model = without_refiner(load_model("starter_4_1_3d"))
    volume = Volume(np.zeros((32, 32, 32), np.float32), np.eye(4), "mri")
    plain, refined = (plan_flops(model, volume, CodecOptions(refine=n)) for n in (0, 10))
    assert refined > 10 * plain  # 31 decoder passes on top of one encode and one decode


@pytest.mark.parametrize("model, image, why", [
    ("bicubic@4", "MR_small.dcm", "needs one of our autoencoders"),
    ("starter_4_1_2d", "RG1_UNCR.dcm", "runs on whole slices"),
])
def test_refinement_refuses_what_it_cannot_run_with_a_one_line_error(tmp_path, capsys, model,
                                                                     image, why):
    out = tmp_path / "out.nii.gz"
    code = main(["reconstruct", get_testdata_file(image), "-o", str(out), "--model", model,
                 "--refine", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and why in err and "\n" not in err
    assert not out.exists()


def test_cli_reconstruct_with_refine_scores_higher_on_a_real_mri(tmp_path):
    """`medvae reconstruct --refine` on nibabel's anatomical.nii (held out from training), with the
    3D starter's autoencoder alone and with its learned refiner (which refinement continues)."""
    src = str(data_path / "anatomical.nii")
    plain = save_model(without_refiner(load_model("starter_4_1_3d")), tmp_path / "plain.safetensors")
    psnr = {}
    for model in ("starter_4_1_3d", str(plain)):
        for n in (0, 5):
            metrics = tmp_path / f"m{n}.json"
            assert main(["reconstruct", src, "-o", str(tmp_path / f"r{n}.nii.gz"), "--model",
                         model, "--refine", str(n), "--metrics", str(metrics)]) == 0
            psnr[model, n] = json.loads(metrics.read_text())["psnr_db"]
    assert psnr[str(plain), 5] > psnr[str(plain), 0] + 0.2  # measured: +0.5 dB
    assert psnr["starter_4_1_3d", 0] > psnr[str(plain), 0] + 0.2  # the learned refiner: +0.3
    assert psnr["starter_4_1_3d", 5] > psnr["starter_4_1_3d", 0]
    assert nib.load(tmp_path / "r5.nii.gz").shape == nib.load(src).shape


def test_mr_small_is_a_2d_image_refinement_can_run_whole():
    """The 2D path refines batches of whole slices: a real 64^2 MR slice gets a lower error."""
    a = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
    volume = Volume(a, np.eye(4), "mri")
    model = load_model("starter_4_1_2d")
    errors = [float(np.mean((reconstruct(volume, model, CodecOptions(refine=n)).array - a) ** 2))
              for n in (0, 10)]
    assert errors[1] < errors[0]
