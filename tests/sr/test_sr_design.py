"""The SR design fixes: per-channel latent shift/scale measured on the training latents, EMA
weights exported, the residual target whose zero prediction is the condition, diffusers folders,
and `medvae sr --samples N` (mean + per-voxel SD map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file
from safetensors.torch import load_file

from medvae_engine.cli.sr import main
from medvae_engine.codec.spec import load_codec
from medvae_engine.data.degradation import degrade, resize
from medvae_engine.imaging.io import read_volume
from medvae_engine.imaging.normalization import fit_normalization
from medvae_engine.imaging.volume import Volume
from medvae_engine.runtime.progress import run
from medvae_engine.sr.pipeline import SROptions, super_resolve_steps
from medvae_engine.sr.samplers import run_sampler
from medvae_engine.sr.train_sr import run_sr_training
from medvae_engine.sr.unet import SRDenoiser, load_sr_model, save_sr_model, unet_config

torch.set_num_threads(1)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.moveaxis(x.astype(np.float64), 1, 0).reshape(x.shape[1], -1)
    return x.mean(1), x.std(1, ddof=1)


def test_latent_shift_and_scale_are_measured_on_training_latents(trained_run):
    """The stored shift/scale are the per-channel mean/SD of the cached training latents (the
    condition: LR latents bilinearly upsampled; the target: HR latents), computed here with numpy
    from the cache; the tiny AE's latents are far from unit variance, so this is not identity."""
    model = load_sr_model(trained_run / "sr_model.safetensors")
    cache = torch.load(trained_run / "latent_cache.pt", weights_only=True)
    hr = cache["hr_latents"].numpy()
    cond = F.interpolate(cache["lr_latents"], size=hr.shape[-2:], mode="bilinear",
                         align_corners=False).numpy()
    for key, x in (("cond", cond), ("target", hr)):
        mean, sd = channel_stats(x)
        np.testing.assert_allclose(model.latent_norm[f"{key}_shift"], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(model.latent_norm[f"{key}_scale"], sd, rtol=1e-3)
    assert not np.allclose(model.latent_norm["target_scale"], 1.0, atol=0.05)
    # the model generates standardised latents: mapped back they are the cache's HR latents
    z = cache["hr_latents"][:4]
    c = torch.from_numpy(cond[:4])
    x = model.to_target(z, c)
    assert torch.allclose(model.from_target(x, c), z, atol=1e-5)


def test_exported_weights_are_the_ema_of_the_training_weights(sr_config, tmp_path):
    """From the EMA after step 1, the training weights after steps 2, 3, 4 (exact resume, one
    step at a time) averaged here with the warm-up EMA formula d_n = min(d, (1+n)/(10+n)) equal
    the exported weights, which are not the last training weights."""
    path = sr_config({"optim": {"ema_decay": 0.3}, "run": {"checkpoint_every": 1}})
    out = tmp_path / "run"
    for step in range(1, 5):
        for _ in run_sr_training(path, resume=step > 1, stop_at=step if step < 4 else None):
            pass
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        weights = state["model"]
        if step == 1:
            shadow = state["ema"]
        else:
            d = min(0.3, (1 + step) / (10 + step))
            shadow = {k: d * shadow[k] + (1 - d) * weights[k] for k in weights}
    exported = load_file(str(out / "sr_model.safetensors"))
    for k, v in exported.items():
        assert torch.allclose(v, shadow["unet." + k], atol=1e-6), k
    assert any(not torch.allclose(v, weights["unet." + k]) for k, v in exported.items())


def tiny_model(residual: bool, conditioning: str) -> SRDenoiser:
    model = SRDenoiser(unet_config(3, "tiny"), "x0", conditioning=conditioning, residual=residual)
    with torch.no_grad():  # a UNet whose output is zero: the zero prediction
        model.unet.conv_out.weight.zero_()
        model.unet.conv_out.bias.zero_()
    return model.eval()


def test_residual_zero_prediction_is_the_condition(tiny_ae_dir):
    """A residual model predicting zero returns its condition: for pixel conditioning the AE
    reconstruction of the bicubic-upsampled LR image (computed here through the codec); a
    non-residual model predicting zero does not."""
    ae = load_codec(str(tiny_ae_dir / "tiny_ae.safetensors"))
    hr = read_volume(get_testdata_file("MR_small.dcm"))
    norm = fit_normalization(hr.array, hr.modality)
    lr_model = degrade(norm.forward(hr.array), "bicubic", 4)
    lr = Volume(norm.inverse(lr_model), np.eye(4), "mri")
    up = torch.from_numpy(resize(lr_model, (64, 64), "bicubic").copy())[None, None]
    with torch.no_grad():
        expected = norm.inverse(ae.decode(ae.encode(up.repeat(1, 3, 1, 1))).mean(1)[0].numpy())
    options = SROptions(steps=5, seed=3)
    out = run(super_resolve_steps(lr, ae, tiny_model(True, "pixel"), options,
                                normalization=norm)).array
    np.testing.assert_allclose(out, expected, atol=1e-3 * np.ptp(expected))
    plain = run(super_resolve_steps(lr, ae, tiny_model(False, "pixel"), options,
                                  normalization=norm)).array
    assert np.abs(plain - expected).max() > 0.05 * np.ptp(expected)


def test_sr_folder_round_trip_is_a_diffusers_folder(trained_run, tmp_path):
    """The export writes a diffusers folder; it loads back to the same model (config with the
    latent shift/scale, conditioning, objective) and plain diffusers reads its UNet."""
    from diffusers import UNet2DModel

    single = load_sr_model(trained_run / "sr_model.safetensors")
    folder = load_sr_model(trained_run / "sr_model")
    assert folder.sr_config() == single.sr_config()
    assert folder.card["scale"] == 4
    again = save_sr_model(single, tmp_path / "copy")
    copy = load_sr_model(again)
    plain = UNet2DModel.from_pretrained(str(again)).eval()
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        ref = single(z, c, t)
        assert torch.equal(folder(z, c, t), ref) and torch.equal(copy(z, c, t), ref)
        assert torch.equal(plain(torch.cat([z, c], 1), t).sample, ref)
    from medvae_engine.sr.pipeline import sample_latents_steps

    gens = lambda: [torch.Generator().manual_seed(k) for k in range(2)]  # noqa: E731
    with torch.no_grad():
        assert torch.equal(run_sampler(sample_latents_steps(copy, c, "ddim", 3, gens())),
                           run_sampler(sample_latents_steps(single, c, "ddim", 3, gens())))


def test_cli_samples_writes_mean_and_sd_with_matching_geometry(trained_run, tmp_path):
    """--samples 3 --seed 5 writes the mean of the single-sample outputs for seeds 5, 6, 7 and
    their per-voxel SD (ddof 1) beside it, on the same grid; N = 1 is refused, nothing written."""
    source = get_testdata_file("MR_small.dcm")
    model = str(trained_run / "sr_model.safetensors")
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", source, "-o", str(out), "--sr-model", model, "--steps", "2",
                 "--samples", "3", "--seed", "5"]) == 0
    sd_file = tmp_path / "sr.sd.nii.gz"
    mean, sd = read_volume(out), read_volume(sd_file)
    singles = []
    for seed in (5, 6, 7):
        one = tmp_path / f"one{seed}.nii.gz"
        assert main(["sr", source, "-o", str(one), "--sr-model", model, "--steps", "2",
                     "--seed", str(seed)]) == 0
        singles.append(read_volume(one).array.astype(np.float64))
    assert mean.shape == sd.shape == (256, 256)
    np.testing.assert_allclose(sd.affine, mean.affine)
    np.testing.assert_allclose(mean.array, np.mean(singles, 0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(sd.array, np.std(singles, 0, ddof=1), rtol=1e-4, atol=1e-3)
    assert sd.array.max() > 0 and sd.array.min() >= 0


def test_cli_samples_one_is_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", get_testdata_file("MR_small.dcm"), "-o", str(out), "--sr-model",
                 str(trained_run / "sr_model.safetensors"), "--samples", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --samples 1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,expected", [("a/sr.nii.gz", "a/sr.sd.nii.gz"),
                                           ("sr.png", "sr.sd.nii.gz"),
                                           ("x.y.mha", "x.y.sd.nii.gz")])
def test_sd_path(name, expected):
    from pathlib import Path

    from medvae_engine.cli.sr import sd_path

    assert sd_path(name) == Path(expected)
