"""The demo pipeline (what `make demo` shows) runs end to end and writes outputs and screenshots."""

from __future__ import annotations

import numpy as np
import pytest
from imageio.v3 import imread

from medvae_engine.codec.latents import load_latent
from medvae_engine.imaging.io import read_volume
from napari_medvae import demo
from napari_medvae._sample_data import sample_path
from napari_medvae._session import default_choice, is_baseline
from napari_medvae.widgets._common import grid_of

pytestmark = pytest.mark.gui


def test_demo_pipeline_writes_geometry_true_outputs_and_screenshots(viewer, sync_jobs, tmp_path):
    image, widgets = demo.populate(viewer)
    finished = []
    demo.run_pipeline(viewer, image, widgets, lambda: finished.append(True))
    assert finished and grid_of(viewer).enabled and tuple(grid_of(viewer).shape) == (1, 3)
    starter = not is_baseline(default_choice())
    expected = "model: starter" if starter else "bicubic baseline (starter weights not available yet)"
    assert viewer.canvas.overlays["text"].text.startswith(expected)
    written = {p.name: p for p in demo.write_outputs(viewer, tmp_path, screenshots=True)}
    source = read_volume(sample_path("mri_brain"))
    recon = read_volume(written["mri_brain_mni152_reconstruction.nii.gz"])
    np.testing.assert_allclose(recon.affine, source.affine, atol=1e-5)
    assert recon.shape == source.shape and np.corrcoef(recon.array.ravel(), source.array.ravel())[0, 1] > 0.9
    latent = load_latent(written["mri_brain_mni152_latent.nii.gz"])
    assert latent.image_shape == source.shape
    grid = imread(written["compare_grid.png"])[..., :3].astype(int)
    assert (np.abs(grid[..., 0] - grid[..., 2]) > 40).sum() > 100  # coloured map pixels
    assert imread(written["overlay.png"]).shape[0] > 100
