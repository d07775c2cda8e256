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
