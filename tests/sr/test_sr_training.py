"""`medvae train-sr`: a tiny run on real images, the latent cache, exact resume, config errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from safetensors.torch import load_file

import medvae_engine
from medvae_engine.analysis.metrics import psnr
from medvae_engine.codec.spec import load_codec
from medvae_engine.data.degradation import degrade
from medvae_engine.errors import ConfigError, MedVAEError
from medvae_engine.imaging.io import read_volume
from medvae_engine.imaging.normalization import fit_normalization
from medvae_engine.sr.pipeline import decode_latents, encode_images
from medvae_engine.sr.train_sr import load_sr_config, run_sr_training
from medvae_engine.sr.unet import load_sr_model

torch.set_num_threads(1)


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_exports_model_card_and_validation(trained_run, tiny_ae_dir):
    model = load_sr_model(trained_run / "sr_model.safetensors")
    assert model.card["scale"] == 4 and model.objective == "x0" and model.latent_channels == 3
    assert model.card["autoencoder"].endswith("tiny_ae.safetensors")
    assert len(model.card["data"]) == 3 and model.card["data"][-1].startswith("val:")
    log = rows(trained_run / "metrics.csv")
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    last = log[-1]
    # the held-out crops are windows of MR_small, and the AE ceiling and bicubic PSNRs reported
    # equal an independent encode/decode and upsampling of those crops
    volume = read_volume(get_testdata_file("MR_small.dcm"))
    x = fit_normalization(volume.array, volume.modality).forward(volume.array)
    crops = torch.load(trained_run / "latent_cache.pt", weights_only=True)["val_hr"][:, 0].numpy()
    windows = np.lib.stride_tricks.sliding_window_view(x, (32, 32))
    for crop in crops:
        assert np.isclose(windows, crop).all(axis=(2, 3)).any()
    assert crops.std(axis=(1, 2)).min() > 0.01  # not flat background
    ae = load_codec(str(tiny_ae_dir / "tiny_ae.safetensors"))
    with torch.no_grad():
        rec = decode_latents(ae, encode_images(ae, torch.from_numpy(crops)[:, None]))[:, 0].numpy()
    unit = lambda a: ((a + 1) / 2).clip(0, 1)  # noqa: E731
    mean_psnr = lambda tests: np.mean([psnr(unit(a), unit(b)) for a, b in zip(crops, tests)])  # noqa: E731
    assert float(last["val_psnr_ae"]) == pytest.approx(mean_psnr(rec), abs=1e-3)
    bicubic = torch.nn.functional.interpolate(
        torch.from_numpy(np.stack([degrade(c, "bicubic", 4) for c in crops]))[:, None],
        size=(32, 32), mode="bicubic", align_corners=False)[:, 0].numpy()
    assert float(last["val_psnr_bicubic"]) == pytest.approx(mean_psnr(bicubic), abs=1e-3)
    assert np.isfinite(float(last["val_psnr_sr"]))


def test_resume_is_bit_exact_and_cache_is_reused(sr_config, tmp_path):
    shared = {"data": {"cache": str(tmp_path / "cache.pt")}}
    full = sr_config({**shared, "run": {"output_dir": "full"}}, "full.yaml")
    for _ in run_sr_training(full):
        pass
    cache_time = (tmp_path / "cache.pt").stat().st_mtime_ns
    part = sr_config({**shared, "run": {"output_dir": "part"}}, "part.yaml")
    for _ in run_sr_training(part, stop_at=2):
        pass
    assert not (tmp_path / "part" / "sr_model.safetensors").exists()
    for _ in run_sr_training(part, resume=True):
        pass
    assert (tmp_path / "cache.pt").stat().st_mtime_ns == cache_time  # built once, reused
    a = load_file(str(tmp_path / "full" / "sr_model.safetensors"))
    b = load_file(str(tmp_path / "part" / "sr_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda name: [r["loss"] for r in rows(tmp_path / name / "metrics.csv")]  # noqa: E731
    assert losses("full") == losses("part")
    with pytest.raises(MedVAEError, match="already exists"):
        next(iter(run_sr_training(full)))


def test_changed_degradation_rebuilds_the_cache(sr_config, tmp_path):
    cache = {"cache": str(tmp_path / "cache.pt")}
    first = sr_config({"data": cache, "run": {"steps": 1, "output_dir": "a"}}, "a.yaml")
    for _ in run_sr_training(first):
        pass
    before = torch.load(tmp_path / "cache.pt", weights_only=True)
    second = sr_config({"data": cache, "degradation": {"kind": "lanczos"},
                        "run": {"steps": 1, "output_dir": "b"}}, "b.yaml")
    for _ in run_sr_training(second):
        pass
    after = torch.load(tmp_path / "cache.pt", weights_only=True)
    assert before["key"] != after["key"]
    assert torch.equal(before["hr_latents"], after["hr_latents"])  # same HR crops
    assert not torch.equal(before["lr_latents"], after["lr_latents"])  # other LR images


def test_pixel_space_training_learns(sr_config, tmp_path):
    path = sr_config({"model": {"autoencoder": "pixels"}, "optim": {"lr": 3e-3},
                      "run": {"steps": 30, "val_every": 1000, "checkpoint_every": 1000}})
    losses = [p.info["loss"] for p in run_sr_training(path) if "loss" in p.info]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.parametrize("update,message", [
    ({"data": {"crops_per_image": 3}}, "unknown key 'data.crops_per_image'"),
    ({"model": {"objective": "flow"}}, "validation.sampler"),
    ({"degradation": {"kind": "nearest"}}, "degradation.kind"),
    ({"run": {"steps": 0}}, "run.steps"),
])
def test_config_errors_name_the_key(sr_config, update, message):
    with pytest.raises(ConfigError, match=message):
        load_sr_config(sr_config(update))


def test_hr_size_must_fit_factor_scale_and_unet(sr_config):
    path = sr_config({"data": {"hr_size": 24}})
    with pytest.raises(ConfigError, match="multiple of 16"):
        next(iter(run_sr_training(path)))


def test_degradations_on_a_real_image():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    hr = ds.pixel_array.astype(np.float32)
    bicubic, lanczos = degrade(hr, "bicubic", 4), degrade(hr, "lanczos", 4)
    blur = degrade(hr, "blur", 4)
    assert bicubic.shape == lanczos.shape == (16, 16) and blur.shape == hr.shape
    assert not np.allclose(bicubic, lanczos)
    assert abs(bicubic.mean() - hr.mean()) < 0.05 * hr.std()  # antialiased: mean preserved
    assert np.abs(np.diff(blur, axis=0)).mean() < np.abs(np.diff(hr, axis=0)).mean()
    with pytest.raises(ValueError):
        degrade(hr[:62], "bicubic", 4)


def test_shipped_config_validates():
    path = Path(medvae_engine.__file__).parent / "configs" / "train_sr.yaml"
    config = load_sr_config(path)
    assert config.model.autoencoder == "starter_4_3_2d" and config.model.preset == "latent_sr"
    assert config.degradation.scale == 4 and config.data.hr_size == 256


def test_ddp_two_processes_equal_one(sr_config, tmp_path):
    """torchrun with 2 gloo processes of batch 2 reaches the weights of 1 process of batch 4."""
    cache = {"cache": str(tmp_path / "cache.pt")}
    single = sr_config({"data": {**cache, "batch_size": 4}, "run": {"output_dir": "one"}}, "1.yaml")
    ddp = sr_config({"data": {**cache, "batch_size": 2}, "run": {"output_dir": "two"}}, "2.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cli = ["-m", "medvae_engine.cli.sr", "train-sr"]
    subprocess.run([sys.executable, *cli, str(single)], check=True, env=env, timeout=120)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29547", *cli, str(ddp)], check=True, env=env, timeout=120)
    a = load_file(str(tmp_path / "one" / "sr_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "sr_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
