"""The one degradation (data/degradation.py) and the block-grid affine (imaging/grid.py) on real
images: PIL's filters as the independent reference, known answers for ramps and constants."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medvae_engine.benchmarks.sr import degrade_in_model_space
from medvae_engine.data.degradation import degrade, degrade_volume
from medvae_engine.errors import InputError
from medvae_engine.imaging.grid import axis_factors, block_affine
from medvae_engine.imaging.io import read_volume
from medvae_engine.imaging.normalization import fit_normalization
from medvae_engine.imaging.volume import Volume
from napari_medvae._sample_data import sample_path


def ct_volume() -> Volume:
    """The real 128 x 128 CT_small slice in HU with its DICOM geometry."""
    return read_volume(get_testdata_file("CT_small.dcm"))


def pil_bicubic(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize(
        (shape[1], shape[0]), Image.Resampling.BICUBIC), np.float32)


def world(affine: np.ndarray, index) -> np.ndarray:
    return affine[:3, : len(index)] @ np.asarray(index, float) + affine[:3, 3]


def test_degraded_ct_slice_is_pils_bicubic_of_the_cropped_slice_on_its_block_grid():
    ct = ct_volume()
    hr = Volume(ct.array[:126, :127], ct.affine, ct.modality, dict(ct.metadata))  # odd sides
    lr, reference = degrade_volume(hr, "bicubic", 4)
    assert reference.shape == (124, 124) and lr.shape == (31, 31)
    np.testing.assert_array_equal(reference.array, ct.array[:124, :124])
    np.testing.assert_array_equal(lr.array, pil_bicubic(ct.array[:124, :124], (31, 31)))
    # LR voxel (i, j) sits at the centre of the 4 x 4 HR block it summarises
    corners = [world(ct.affine, (4 * 2 + di, 4 * 5 + dj)) for di in (0, 3) for dj in (0, 3)]
    np.testing.assert_allclose(world(lr.affine, (2, 5)), np.mean(corners, axis=0), atol=1e-9)
    assert lr.metadata["degradation"] == "bicubic" and "source_path" not in lr.metadata


def test_model_space_degradation_of_the_sr_report_is_the_same_function():
    ct = ct_volume()
    lr, hr, norm, model_space = degrade_in_model_space(ct, {"kind": "bicubic", "scale": 4})
    expected = fit_normalization(ct.array, ct.modality)
    assert (norm.lo, norm.hi) == (expected.lo, expected.hi)
    np.testing.assert_array_equal(model_space, pil_bicubic(expected.forward(ct.array), (32, 32)))
    np.testing.assert_array_equal(lr.array, expected.inverse(model_space))
    np.testing.assert_array_equal(hr.array, ct.array)


def test_known_answers_constant_and_ramp_give_their_block_means():
    """Antialiased bicubic of a constant is the constant; of a linear ramp, away from the borders,
    the mean of each block (a symmetric filter keeps a ramp's value at the block centre)."""
    const = np.full((64, 48), 37.5, np.float32)
    np.testing.assert_allclose(degrade(const, "bicubic", 4), 37.5, rtol=1e-6)
    np.testing.assert_allclose(degrade(const, "lanczos", 4), 37.5, rtol=1e-6)
    ramp = (np.arange(64, dtype=np.float32)[:, None] * 3 + np.arange(48)[None, :]).astype(np.float32)
    block_mean = ramp.reshape(16, 4, 12, 4).mean(axis=(1, 3))
    for kind, border in (("bicubic", 2), ("lanczos", 3)):  # filter support: 2 and 3 LR pixels
        inner = (slice(border, -border),) * 2
        np.testing.assert_allclose(degrade(ramp, kind, 4)[inner], block_mean[inner], atol=1e-3)
    blurred = degrade(ramp, "blur", 4)  # refinement task: the HR grid, smoothed
    assert blurred.shape == ramp.shape
    np.testing.assert_allclose(blurred[14:-14, 14:-14], ramp[14:-14, 14:-14], atol=1e-3)


def test_volume_is_degraded_slice_by_slice_across_the_slice_axis():
    mri = read_volume(sample_path("mri_brain"))
    hr = Volume(mri.array[40:70, 48:53, 40:74], mri.affine, "mri")
    lr, reference = degrade_volume(hr, "bicubic", 4, axis=1)
    assert lr.shape == (7, 5, 8) and reference.shape == (28, 5, 32)
    for k in range(5):
        np.testing.assert_array_equal(lr.array[:, k], pil_bicubic(reference.array[:, k], (7, 8)))
    np.testing.assert_allclose(block_affine(lr.affine, [1 / 4, 1, 1 / 4]), reference.affine)
    same_grid, _ = degrade_volume(hr, "blur", 4, axis=1)
    assert same_grid.shape == reference.shape
    np.testing.assert_array_equal(same_grid.affine, reference.affine)
    with pytest.raises(InputError, match="smaller than the degradation factor"):
        degrade_volume(Volume(np.zeros((3, 8), np.float32)), "bicubic", 4)


def test_block_affine_centres_blocks_and_its_inverse_refines_exactly():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * [0.7, 2.0, 1.1]
    affine[:3, 3] = rng.normal(size=3) * 20
    coarse = block_affine(affine, [2, 1, 3])
    block = [world(affine, (2 * 4 + i, 7, 3 * 5 + k)) for i in range(2) for k in range(3)]
    np.testing.assert_allclose(world(coarse, (4, 7, 5)), np.mean(block, axis=0), atol=1e-9)
    np.testing.assert_allclose(block_affine(coarse, [1 / 2, 1, 1 / 3]), affine, atol=1e-12)
    assert axis_factors(3, (0, 2), 4) == [4, 1, 4]
    np.testing.assert_array_equal(block_affine(np.eye(4), [4, 4])[:3, 3], [1.5, 1.5, 0])

