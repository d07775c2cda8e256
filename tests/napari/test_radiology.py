"""Radiological display maths without a viewer: axis codes, views, letters and reading windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nibabel.orientations import aff2axcodes
from pydicom.data import get_testdata_file

from medvae_engine.imaging.io import read_volume
from napari_medvae._compare import format_metrics, panel_caption, panel_metrics
from napari_medvae._display import shared_window
from napari_medvae._radiology import (
    RAS_LETTERS,
    anatomical_axes,
    display_flips,
    opening_preset,
    percentile_limits,
    preset_limits,
    screen_letters,
    view_order,
    window_limits,
)
from napari_medvae._sample_data import sample_path

CT_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"


def codes(affine, ndim=3) -> tuple[str, ...]:
    axes, signs = anatomical_axes(affine, ndim)
    return tuple(RAS_LETTERS[a][0 if s > 0 else 1] for a, s in zip(axes, signs, strict=True))


def permuted(affine, order) -> np.ndarray:
    out = np.array(affine, np.float64)
    out[:3, :3] = out[:3, list(order)]
    return out


@pytest.mark.parametrize("source", ["mri_brain", "ct_series", "permuted", "oblique"])
def test_axis_codes_match_nibabel(source):
    if source == "mri_brain":
        affine = read_volume(sample_path("mri_brain")).affine
    elif source == "ct_series":
        affine = read_volume(CT_SERIES).affine
    elif source == "permuted":  # an S, A, R stored volume with flipped first axis
        affine = permuted(np.diag([1.0, 1.0, -1.0, 1.0]), (2, 1, 0))
    else:  # 20 degrees about z: still mostly R, A, S
        c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
        affine = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ np.diag(
            [0.8, 0.8, 3.0, 1.0])
    assert codes(affine) == aff2axcodes(affine)


def test_axial_view_puts_patient_right_on_screen_left_and_anterior_up():
    axes, signs = anatomical_axes(np.diag([-0.7, -0.7, 2.5, 1.0]), 3)  # LPS-stored CT
    assert display_flips(signs) == [1.0, 1.0, -1.0]  # x already grows to L, y to P; z flipped
    assert view_order(axes, "axial", 3) == (2, 1, 0)
    assert screen_letters(1, 0) == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert view_order(axes, "coronal", 3) == (1, 2, 0)
    assert screen_letters(2, 0) == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert view_order(axes, "sagittal", 3) == (0, 2, 1)
    assert screen_letters(2, 1) == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    # a volume stored S, A, R: the viewer order follows its axes; a channel axis is kept in front
    axes, _ = anatomical_axes(permuted(np.eye(4), (2, 1, 0)), 3)
    assert view_order(axes, "axial", 4) == (0, 1, 2, 3)
    assert view_order(axes, "sagittal", 4) == (0, 3, 1, 2)


def test_a_2d_image_shows_its_own_plane():
    axes, _ = anatomical_axes(read_volume(sample_path("mr_shoulder")).affine, 2)  # oblique sagittal
    assert sorted(axes) == [1, 2]
    assert view_order(axes, "axial", 2) == (1, 0)  # rows = S-I (data axis 1), columns = A-P


def test_window_presets_are_width_and_level_in_hu():
    assert window_limits(80, 40) == (0, 80)
    data = np.zeros(3)
    assert preset_limits("brain", data) == (0, 80)
    assert preset_limits("subdural", data) == (-25, 175)
    assert preset_limits("abdomen", data) == (-160, 240)
    assert preset_limits("lung", data) == (-1350, 150)
    assert preset_limits("bone", data) == (-500, 1500)


def test_opening_window_by_modality():
    ct = read_volume(get_testdata_file("CT_small.dcm"))
    assert opening_preset("ct", ct.metadata) == "abdomen"
    assert opening_preset("ct", {"BodyPartExamined": "HEAD"}) == "brain"
    assert opening_preset("ct", {"StudyDescription": "CT BRAIN W/O"}) == "brain"
    mr = read_volume(get_testdata_file("MR_small.dcm"))
    assert opening_preset("mri", mr.metadata) == "percentile 1-99.5%"
    assert percentile_limits(mr.array) == tuple(np.percentile(mr.array, [1, 99.5]))
    assert shared_window([ct, ct]) == [-160.0, 240.0]
    lo, hi = shared_window([mr, mr.with_array(mr.array * 2)])
    assert (lo, hi) == tuple(np.percentile(np.concatenate([mr.array.ravel(), 2 * mr.array.ravel()]),
                                           [1, 99.5]))


def test_compare_captions_and_scores():
    assert panel_caption("head", {"kind": "image"}) == "Original: head"
    assert panel_caption("r", {"kind": "reconstruction", "model": "starter_4_1_2d",
                               "precision": "bf16"}) == "Reconstruction: starter_4_1_2d, bf16"
    name = "difference [HU] (r vs head)"
    assert panel_caption(name, {"kind": "map", "map": "difference"}, "") == name
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 100, (16, 48, 48))
    test = reference + rng.normal(0, 1, reference.shape)
    scores = panel_metrics(reference, test, 0, 2)
    unit = (reference.max() - reference.min())
    low = reference.min()  # both mapped by the reference range, values outside it clipped
    mse = np.mean(((np.clip(test[2], low, low + unit) - reference[2]) / unit) ** 2)
    assert scores["slice"]["PSNR dB"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-6)
    assert 0.9 < scores["volume"]["SSIM"] < 1 and 0.9 < scores["volume"]["MS-SSIM"] < 1
    text = format_metrics(scores)
    assert text.splitlines()[0].startswith("slice: PSNR") and "MS-SSIM" in text.splitlines()[1]
    thin = panel_metrics(reference[:4], test[:4], 0, 2)  # MS-SSIM needs every side > 10 voxels
    assert "MS-SSIM n/a" in format_metrics(thin).splitlines()[1]


def test_long_captions_are_drawn_on_short_lines_without_losing_words():
    from napari_medvae.widgets._captions import CAPTION_COLUMNS, wrap_caption

    caption = ("difference [HU] (CT_small reconstruction (starter_4_1_2d, bf16) vs CT_small)\n"
               "slice: PSNR 35.80 dB, SSIM 0.894, MS-SSIM 0.950")
    drawn = wrap_caption(caption).splitlines()
    assert drawn[0] == "" and drawn[1] == "difference [HU]" and drawn[2].startswith("(CT_small")
    assert max(len(line) for line in drawn) <= CAPTION_COLUMNS
    assert " ".join(drawn).split() == caption.split()
    assert wrap_caption("Original: CT_small") == "Original: CT_small"
