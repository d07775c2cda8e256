"""Fixtures of the napari plugin tests: a tiny seeded model, small real images, a shown viewer.

GUI tests run under Xvfb (pytest-xvfb starts it). Without a display they skip locally and fail
under CI=true, so a broken GUI set-up cannot pass silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medvae_engine.imaging.io import read_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import AutoencoderKL, save_model
from napari_medvae._sample_data import sample_path

TINY = {"spatial_dims": 2, "in_channels": 1, "ch": 32, "ch_mult": (1, 2, 4), "z_channels": 1}


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A seeded random 2D autoencoder (f=4) saved through the engine, loadable by path."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("models") / "tiny_f4.safetensors"
    save_model(AutoencoderKL(**TINY), path)
    return path


@pytest.fixture(scope="session")
def mri_crop() -> Volume:
    """A 32 x 40 x 36 crop of the bundled MNI152 brain MRI with its real geometry."""
    volume = read_volume(sample_path("mri_brain"))
    start = np.array([40, 48, 40])
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
    array = volume.array[40:72, 48:88, 40:76]
    return Volume(array, affine, "mri", {"source_path": str(sample_path("mri_brain"))})


@pytest.fixture
def sync_jobs(monkeypatch):
    """Engine jobs run in the calling thread (deterministic widget tests)."""
    monkeypatch.setenv("NAPARI_MEDVAE_SYNC", "1")


@pytest.fixture
def async_jobs(monkeypatch):
    """Engine jobs run in napari thread workers, as for a user."""
    monkeypatch.delenv("NAPARI_MEDVAE_SYNC", raising=False)


def pytest_runtest_setup(item) -> None:
    """GUI tests need an X display (pytest-xvfb provides one): skip without, but fail under CI.

    Checked before any fixture runs, because creating the QApplication without a display aborts
    the whole process.
    """
    if item.get_closest_marker("gui") is None or os.environ.get("DISPLAY"):
        return
    message = "no X display for the napari GUI tests (is Xvfb installed? pytest-xvfb starts it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def viewer(make_napari_viewer):
    """A shown napari viewer (screenshots need one)."""
    return make_napari_viewer(show=True)


@pytest.fixture
def errors() -> list[str]:
    """Messages of the error notifications napari dispatches during the test."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    shown: list[str] = []

    def record(event) -> None:
        if event.severity == NotificationSeverity.ERROR:
            shown.append(str(event.message))

    notification_manager.notification_ready.connect(record)
    yield shown
    notification_manager.notification_ready.disconnect(record)
