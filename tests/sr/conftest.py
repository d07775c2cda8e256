"""Shared SR fixtures: a tiny random autoencoder file, a tiny SR training config on real images,
one short trained run, and small real inputs (pydicom MR slice, an MNI152 block)."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medvae_engine.models import AutoencoderKL, save_model

torch.set_num_threads(1)

TINY_SR = {
    "seed": 1,
    "data": {"train": ["builtin:pydicom/MR2_UNCR.dcm", "builtin:pydicom/CT_small.dcm"],
             "val": ["builtin:pydicom/MR_small.dcm"],
             "hr_size": 32, "crops": 16, "batch_size": 4},
    "degradation": {"kind": "bicubic", "scale": 4},
    "model": {"autoencoder": "tiny_ae.safetensors", "preset": "tiny"},
    "validation": {"sampler": "ddim", "steps": 3, "images": 2},
    "run": {"steps": 4, "output_dir": "run", "precision": "fp32", "threads": 1,
            "checkpoint_every": 2, "val_every": 4, "log_every": 1},
}


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session")
def tiny_ae_dir(tmp_path_factory) -> Path:
    """A folder holding tiny_ae.safetensors: random weights, f=4, 3 latent channels, RGB input
    (like starter_4_3_2d, much smaller)."""
    folder = tmp_path_factory.mktemp("sr_ae")
    torch.manual_seed(0)
    model = AutoencoderKL(2, 3, 3, 32, (1, 2, 4), 1, 3).eval()
    save_model(model, folder / "tiny_ae.safetensors", {"note": "random weights for SR tests"})
    return folder


@pytest.fixture
def sr_config(tiny_ae_dir, tmp_path):
    """sr_config(update, name) -> path of a YAML (next to the tiny AE) merging ``update``."""

    def write(update: dict | None = None, name: str = "train_sr.yaml") -> Path:
        config = merge(TINY_SR, update or {})
        config["run"]["output_dir"] = str(tmp_path / config["run"]["output_dir"])
        path = tiny_ae_dir / f"{tmp_path.name}_{name}"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture(scope="session")
def trained_run(tiny_ae_dir, tmp_path_factory) -> Path:
    """One short SR training on real images; returns its output folder."""
    from medvae_engine.sr.train_sr import run_sr_training

    out = tmp_path_factory.mktemp("sr_run")
    config = merge(TINY_SR, {"run": {"output_dir": str(out / "run")}})
    path = tiny_ae_dir / "session_train_sr.yaml"
    path.write_text(yaml.safe_dump(config))
    for _ in run_sr_training(path):
        pass
    return out / "run"


@pytest.fixture(scope="session")
def mni_block(tmp_path_factory) -> Path:
    """A small real brain volume: 3 axial slices of 40x48 from the MNI152 template, as NIfTI."""
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=1)
    data = np.asarray(img.get_fdata(), dtype=np.float32)[70:110, 90:138, 80:83]
    path = tmp_path_factory.mktemp("mni") / "mni_block.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    return path
