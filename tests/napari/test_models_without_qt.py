"""Qt-free parts of the plugin: grid plans, model summaries, metric readout, layer geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medvae_engine.analysis import psnr, to_unit_range
from medvae_engine.codec.baselines import get_baseline
from medvae_engine.imaging.volume import Volume
from napari_medvae._compare import plan_grid
from napari_medvae._layers import display_geometry, layer_affine, volume_to_layer_data
from napari_medvae._readout import readout
from napari_medvae._session import summarize


def test_plan_pairs_overlays_with_bases_and_fills_plain_panels():
    names = ["ct", "recon", "diff", "latent", "abs"]
    plan = plan_grid([("ct", ""), ("recon", "diff")], names)
    assert plan.stride == 2 and plan.order[:4] == ["ct", "latent", "recon", "diff"]
    assert plan.visible == {"ct", "recon", "diff"} and plan.spacers == 0
    tight = plan_grid([("ct", ""), ("recon", "diff")], ["ct", "recon", "diff"])
    assert tight.order == ["ct", "", "recon", "diff"] and tight.spacers == 1
    plain = plan_grid([("ct", ""), ("recon", "")], names)
    assert plain.stride == 1 and plain.order[:2] == ["ct", "recon"]


def test_summary_reports_factor_latent_shape_and_ratio():
    text = summarize(get_baseline("bicubic", 2, 4), (64, 130, 128), axis=0)
    assert "factor 4" in text and "latent shape (1, 64, 33, 32)" in text
    assert "compression 16x" in text  # 64*130*128 / (64*33*32) = 15.8 -> 16
    text3d = summarize(get_baseline("trilinear", 3, 4), (64, 64, 64))
    assert "latent shape (1, 16, 16, 16)" in text3d and "compression 64x" in text3d


def test_3d_summary_shows_the_codecs_own_window_choice():
    """The Model panel names the window the codec will use (decode, the larger stage) for a big
    volume, and 'whole' for one smaller than any window."""
    from medvae_engine.codec.memory import choose_roi
    from medvae_engine.codec.pipeline import CodecOptions
    from medvae_engine.models import AutoencoderKL

    model = AutoencoderKL(3, 1, 1, 32, (1, 2, 4), 1, 1).eval()
    roi = choose_roi(model, CodecOptions(), (400, 400, 400), "decode")
    assert f"runs in {roi}^3 windows" in summarize(model, (400, 400, 400))
    assert "runs whole" in summarize(model, (20, 24, 28))


def test_readout_scopes_match_engine_metrics(mri_crop):
    ref = mri_crop.array
    test = ref.copy()
    test[5, 10:20, 10:20] += 50.0
    rows, subbands = readout(ref, test, axis=0, index=5, boxes=[[(5, 6), (10, 20), (10, 20)]])
    value_range = (float(ref.min()), float(ref.max()))
    expected_slice = psnr(to_unit_range(ref[5], value_range), to_unit_range(test[5], value_range))
    assert rows["slice"]["PSNR dB"] == pytest.approx(expected_slice)
    assert rows["region"]["PSNR dB"] < rows["slice"]["PSNR dB"] < rows["volume"]["PSNR dB"]
    assert set(subbands) == {"LL3", "LH3", "HL3", "HH3", "LH2", "HL2", "HH2", "LH1", "HL1", "HH1"}


def test_oblique_geometry_survives_display_and_a_move():
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 3.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    volume = Volume(np.zeros((4, 5, 6), np.float32), affine, "mri")
    _, attributes, _ = volume_to_layer_data(volume, "v")
    meta = attributes["metadata"]["medvae"]
    np.testing.assert_allclose(attributes["scale"], [0.7, 0.8, 3.0])
    np.testing.assert_allclose(layer_affine(meta, attributes["scale"], attributes["translate"]), affine)
    moved = np.asarray(attributes["translate"]) + [1.0, 0.0, 0.0]
    new = layer_affine(meta, attributes["scale"], moved)
    np.testing.assert_allclose(new[:3, 3], affine[:3, 3] + rotation[:, 0])  # 1 mm along axis 0
    np.testing.assert_allclose(display_geometry(new, 3)[1], moved)
