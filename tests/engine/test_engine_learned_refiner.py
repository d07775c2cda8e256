"""The learned latent refiner (models/refiner.py): its error signals against finite differences
and a numpy block mean, padding that cannot steer it, weights that survive a file, and the
shipped 3D starter's refiner against its encoder and against gradient refinement of equal cost
on a real volume held out from training."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import mni_block, without_refiner
from nibabel.testing import data_path

from medvae_engine.cli import main
from medvae_engine.codec.estimate import plan_flops
from medvae_engine.codec.latents import load_latent, sidecar_path
from medvae_engine.codec.pipeline import CodecOptions, decode
from medvae_engine.codec.refine import refine_latent
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import load_model
from medvae_engine.models.autoencoder import AutoencoderKL
from medvae_engine.models.checkpoints import save_model
from medvae_engine.models.refiner import SIGN_STEP, LatentRefiner


def _nonlinear_3d_model() -> AutoencoderKL:
    torch.manual_seed(0)
    model = AutoencoderKL(3, 1, 1, 8, (1, 2, 4), 1, 1, norm_groups=4, shortcut=True,
                          refiner_steps=1).eval()
    with torch.no_grad():  # the shortcut zeroes the image output layer: give it a nonlinear part
        model.decoder.conv_out.weight.normal_(0, 0.05)
    return model


def test_error_signals_match_finite_differences_and_a_numpy_block_mean():
    model = _nonlinear_3d_model()
    x = torch.from_numpy(mni_block(16)).float()[None, None]
    weight = torch.ones_like(x)
    with torch.no_grad():
        z = model.moments(x)[0].float()
    gradient, residual, _ = model.refiner.error_signals(model.decode, x, z, weight)

    def loss(zz):
        with torch.no_grad():
            return float(((model.decode(zz).double() - x.double()) ** 2).sum())

    eps = 1e-2
    for index in [(0, 0, 0, 0, 0), (0, 0, 1, 2, 3), (0, 0, 3, 3, 1)]:
        dz = torch.zeros_like(z)
        dz[index] = eps
        numeric = (loss(z + dz) - loss(z - dz)) / (2 * eps) / (2 * 4**3)
        assert abs(gradient[index].item() - numeric) <= 0.02 * abs(numeric) + 1e-6
    with torch.no_grad():
        r = (model.decode(z) - x)[0, 0].numpy()
    expected = r.reshape(4, 4, 4, 4, 4, 4).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(residual[0, 0].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_a_new_refiner_takes_fixed_steps_against_the_gradient_sign():
    """Before training (output layers zero) each step moves every latent voxel by SIGN_STEP
    against the sign of the error's gradient, as Adam's first step on the latent does; checked
    against the steps written out here, best iterate included, on a real MNI152 block."""
    model = _nonlinear_3d_model()
    model.refiner = LatentRefiner(3, 1, 4, 3).eval()
    x = torch.from_numpy(mni_block(16)).float()[None, None]
    with torch.no_grad():
        z = model.moments(x)[0].float()
        refined = model.encode(x)
    iterates, errors = [], []
    for _ in range(4):
        leaf = z.clone().requires_grad_(True)
        error = ((model.decode(leaf) - x) ** 2).sum()
        (gradient,) = torch.autograd.grad(error, leaf)
        iterates.append(z)
        errors.append(error.item())
        z = z - SIGN_STEP * torch.sign(gradient)
    torch.testing.assert_close(refined, iterates[int(np.argmin(errors))], rtol=0, atol=1e-6)
    assert int(np.argmin(errors)) > 0  # the steps do lower the error here


def test_voxels_outside_the_weight_do_not_steer_the_refiner():
    """The codec marks its padding with weight 0: what the padding holds must not change the
    correction (only the encoder's first guess may see it)."""
    model = load_model("starter_4_1_3d")
    x = torch.from_numpy(mni_block(32)).float()[None, None]
    weight = torch.ones_like(x)
    weight[..., 24:] = 0.0
    other = x.clone()
    other[..., 24:] = torch.rand_like(other[..., 24:]) * 2 - 1
    with torch.no_grad():
        z = model.moments(x)[0]
        a, b = (model.refiner(model.decode, t, z, weight) for t in (x, other))
        changed = model.refiner(model.decode, other, z)  # unweighted: the padding does count
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, changed)


def test_a_refiner_that_would_make_the_latent_worse_returns_it_unchanged():
    """Output layers far too large make every step worse: in eval mode the encoder's latent
    comes back as it was; in training mode the last iterate (what the loss trains)."""
    model = _nonlinear_3d_model()
    with torch.no_grad():
        model.refiner.step[0].conv_out.bias.fill_(2000.0)
    x = torch.from_numpy(mni_block(16)).float()[None, None]
    with torch.no_grad():
        mean = model.moments(x)[0].float()
        torch.testing.assert_close(model.encode(x), mean, rtol=0, atol=0)
        model.refiner.train()
        assert (model.refiner(model.decode, x, mean) - mean).min() > 1.0


def test_refiner_weights_survive_a_safetensors_file(tmp_path):
    model = _nonlinear_3d_model()
    with torch.no_grad():
        for p in model.refiner.parameters():
            p.normal_(0, 0.02)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.config["refiner_steps"] == 1
    x = torch.from_numpy(mni_block(16)).float()[None, None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), model.encode(x), rtol=0, atol=0)
        assert not torch.equal(model.encode(x), model.moments(x)[0])


def _held_out_block() -> torch.Tensor:
    """A 64^3 block of nibabel's anatomical.nii (never trained on), scaled to [-1, 1]."""
    a = np.asarray(nib.load(data_path / "anatomical.nii").dataobj, dtype=np.float32)
    centre = [s // 2 for s in a.shape]
    a = a[tuple(slice(max(0, c - 32), max(0, c - 32) + 64) for c in centre)]
    a = np.pad(a, [(0, 64 - s) for s in a.shape], mode="edge")
    a = (a - a.min()) / (a.max() - a.min()) * 2 - 1
    return torch.from_numpy(a)[None, None]


def test_the_shipped_3d_refiner_beats_its_encoder_and_gradient_steps_of_equal_cost():
    """On a held-out real MRI block the refined latent reconstructs better than the encoder's,
    and better than as many Adam steps on the latent as the refiner has decoder passes."""
    model = load_model("starter_4_1_3d")
    steps = model.config["refiner_steps"]
    x = _held_out_block()

    def mse(z):
        with torch.no_grad():
            return float(((model.decode(z) - x) ** 2).mean())

    with torch.no_grad():
        mean = model.moments(x)[0].float()
        refined = model.encode(x)
    adam = refine_latent(model, x, mean, steps)
    gain_db = 10 * np.log10(mse(mean) / mse(refined))
    assert gain_db > 0.2  # measured: see docs/training.md
    assert mse(refined) < mse(adam)


def test_the_time_estimate_counts_the_learned_refiners_decoder_passes():
    model = load_model("starter_4_1_3d")
    plain = AutoencoderKL(**dict(model.config, refiner_steps=0))
    volume = Volume(np.zeros((32, 32, 32), np.float32), np.eye(4), "mri")
    with_refiner, without = (plan_flops(m, volume, CodecOptions()) for m in (model, plain))
    assert with_refiner > 3 * without  # each step: a decoder pass forward and back


def test_no_refiner_leaves_it_out_and_scores_as_the_autoencoder_alone(tmp_path):
    """`--no-refiner` (CodecOptions(refiner=False)) gives the encoder's own latent: the same
    reconstruction as the model without its refiner, and a lower PSNR on a held-out MRI."""
    src = str(data_path / "anatomical.nii")
    plain = save_model(without_refiner(load_model("starter_4_1_3d")), tmp_path / "plain.safetensors")
    psnr = {}
    for name, model, flags in [("with", "starter_4_1_3d", []),
                               ("without", "starter_4_1_3d", ["--no-refiner"]),
                               ("plain", str(plain), [])]:
        metrics = tmp_path / f"{name}.json"
        assert main(["reconstruct", src, "-o", str(tmp_path / f"{name}.nii.gz"), "--model", model,
                     "--metrics", str(metrics), *flags]) == 0
        psnr[name] = json.loads(metrics.read_text())["psnr_db"]
    assert psnr["without"] == pytest.approx(psnr["plain"], abs=1e-6)
    assert psnr["with"] > psnr["without"] + 0.2  # measured: +0.52 dB (joint link)


def test_the_latent_sidecar_records_whether_the_refiner_ran(tmp_path):
    """A latent file says how it was made: the learned refiner's steps (0 with `--no-refiner`),
    gradient refinement, precision and posterior; the recorded latents are the ones that ran (the
    refined one reconstructs the held-out MRI better)."""
    src = str(data_path / "anatomical.nii")
    original = np.asarray(nib.load(src).dataobj, dtype=np.float32)
    records, errors = {}, {}
    for name, flags in [("with", []), ("without", ["--no-refiner"]),
                        ("adam", ["--no-refiner", "--refine", "2", "--sample", "--seed", "3"])]:
        out = tmp_path / f"{name}.latent.nii.gz"
        assert main(["encode", src, "-o", str(out), "--model", "starter_4_1_3d", *flags]) == 0
        records[name] = load_latent(out).encoding
        back = decode(load_latent(out))
        errors[name] = float(np.mean((back.array - original) ** 2))
    assert records["with"] == {"precision": "fp32", "posterior": "mean",
                               "learned_refiner_steps": 3, "refine_steps": 0}
    assert records["without"]["learned_refiner_steps"] == 0
    assert records["adam"] == {"precision": "fp32", "posterior": "sample (seed 3)",
                               "learned_refiner_steps": 0, "refine_steps": 2}
    assert errors["with"] < errors["without"]


def test_latents_written_before_the_encoding_record_still_load(tmp_path):
    out = tmp_path / "old.latent.nii.gz"
    assert main(["encode", str(data_path / "anatomical.nii"), "-o", str(out),
                 "--model", "starter_4_1_3d", "--no-refiner"]) == 0
    side = sidecar_path(out)
    meta = json.loads(side.read_text())
    del meta["encoding"]
    side.write_text(json.dumps(meta))
    assert load_latent(out).encoding is None
