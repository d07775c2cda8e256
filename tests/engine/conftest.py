"""Tiny random-weight models saved as checkpoint files, and real images, for the engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medvae_engine.imaging.volume import Volume
from medvae_engine.models import AutoencoderKL, save_model


def finish(gen):
    """Drive a generator to its end; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def without_refiner(model: AutoencoderKL) -> AutoencoderKL:
    """The autoencoder of a model with a learned latent refiner, without the refiner: what
    gradient refinement (codec/refine.py) is tested on, on its own."""
    plain = AutoencoderKL(**dict(model.config, refiner_steps=0))
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("refiner.")})
    plain.name = f"{model.name}_without_refiner"
    return plain.eval()


def tiny_model(spatial_dims: int = 2, z_channels: int = 1, seed: int = 0, in_channels: int = 1):
    torch.manual_seed(seed)
    return AutoencoderKL(
        spatial_dims, in_channels, in_channels, 32, (1, 2, 4), 1, z_channels
    ).eval()


@pytest.fixture(scope="session")
def tiny_2d_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny2d.safetensors"
    save_model(tiny_model(2), path, {"note": "random weights for tests"})
    return path


@pytest.fixture(scope="session")
def tiny_3d_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny3d.safetensors"
    save_model(tiny_model(3), path)
    return path


@pytest.fixture(scope="session")
def mr_slice() -> Volume:
    """pydicom's real 64x64 MR slice as a Volume in its own units."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    return Volume(ds.pixel_array.astype(np.float32), np.diag([0.3125, 0.3125, 1.0, 1.0]), "mri")


@pytest.fixture(scope="session")
def ct_volume() -> Volume:
    """A real CT volume in HU: pydicom's CT_small slice stacked with shifted copies, odd sizes."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    vol = np.stack([np.roll(hu, k, axis=0) for k in range(7)], axis=-1)[:61, :53]
    affine = np.array([[0.66, 0, 0, -50.0], [0, 0.66, 0, 20.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    return Volume(vol, affine, "ct")


def mni_block(side: int = 32) -> np.ndarray:
    """A cube of the real MNI152 T1 template (nilearn), scaled to [-1, 1]."""
    from nilearn import datasets

    v = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), dtype=np.float64)
    v = v[80 : 80 + side, 100 : 100 + side, 70 : 70 + side]
    return (v - v.min()) / (v.max() - v.min()) * 2 - 1


def keys_upsample_1d(a: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Cubic convolution (Keys, a = -0.75) by ``factor`` along ``axis``, pixel centres aligned,
    edge samples repeated: written from the kernel's definition, independently of torch."""

    def kernel(t):
        t = np.abs(t)
        a = -0.75
        return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))

    n = a.shape[axis]
    src = (np.arange(n * factor) + 0.5) / factor - 0.5
    base = np.floor(src).astype(int)
    out = 0.0
    for k in range(-1, 3):
        idx = np.clip(base + k, 0, n - 1)
        w = kernel(src - (base + k))
        shape = [1] * a.ndim
        shape[axis] = -1
        out = out + np.take(a, idx, axis=axis) * w.reshape(shape)
    return out
