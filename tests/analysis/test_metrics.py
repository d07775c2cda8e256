"""PSNR, SSIM, MS-SSIM, regions and local maps against scikit-image and pytorch-msssim."""

import math

import numpy as np
import pydicom
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medvae_engine.analysis import metrics as m
from medvae_engine.errors import InputError


def ct_slice() -> np.ndarray:
    """Real 128x128 CT slice mapped to [0, 1] with its own range."""
    a = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    return m.to_unit_range(a, m.reference_range(a))


def mni_slice() -> np.ndarray:
    """Real 197x233 brain MRI slice (MNI template) in [0, 1]."""
    from nilearn.datasets import load_mni152_template

    a = np.asarray(load_mni152_template(resolution=1).get_fdata())[:, :, 90]
    return m.to_unit_range(a, m.reference_range(a))


def degrade(a: np.ndarray, factor: int = 2) -> np.ndarray:
    """Downsample then upsample back (cubic spline): an interpolation baseline."""
    small = ndimage.zoom(a, 1 / factor, order=3)
    up = ndimage.zoom(small, np.array(a.shape) / np.array(small.shape), order=3)
    return np.clip(up, 0, 1)


def test_psnr_and_ssim_match_scikit_image_on_real_ct():
    ref = ct_slice()
    for test in (degrade(ref), np.clip(ndimage.gaussian_filter(ref, 1.2), 0, 1)):
        assert m.psnr(ref, test) == pytest.approx(peak_signal_noise_ratio(ref, test, data_range=1))
        expected = structural_similarity(ref, test, data_range=1, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False)
        assert m.ssim(ref, test) == pytest.approx(expected, abs=1e-10)
        assert m.ssim(ref, test) < 1


def test_ssim_on_volume_matches_scikit_image_3d():
    rng = np.random.default_rng(1)
    ref = ndimage.gaussian_filter(rng.random((20, 24, 22)), 2)
    ref = m.to_unit_range(ref, m.reference_range(ref))
    test = np.clip(ref + 0.03 * rng.standard_normal(ref.shape), 0, 1)
    expected = structural_similarity(ref, test, data_range=1, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)
    assert m.ssim(ref, test) == pytest.approx(expected, abs=1e-10)


def formula_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Wang et al.'s SSIM map written out: 11-tap Gaussian (sigma 1.5, reflect), population
    covariances, K1 = 0.01, K2 = 0.03, data range 1 (independent of scikit-image)."""
    def g(a):
        return ndimage.gaussian_filter(a, 1.5, truncate=3.5, mode="reflect")

    mx, my = g(x), g(y)
    vx, vy, cxy = g(x * x) - mx * mx, g(y * y) - my * my, g(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def test_ssim_equals_the_written_out_formula_on_ct_small_images_and_thin_slabs():
    """scikit-image's SSIM equals the formula to 1e-10; images under 11 pixels a side and thin
    slabs keep working (the border is skipped only along axes longer than 10)."""
    ref = ct_slice()
    test = degrade(ref)
    assert m.ssim(ref, test) == pytest.approx(formula_ssim_map(ref, test)[5:-5, 5:-5].mean(),
                                              abs=1e-10)
    assert np.allclose(m.ssim_map(ref, test), formula_ssim_map(ref, test), rtol=0, atol=1e-10)
    small_ref, small_test = ref[40:48, 40:49], test[40:48, 40:49]
    assert m.ssim(small_ref, small_test) == pytest.approx(
        formula_ssim_map(small_ref, small_test).mean(), abs=1e-10)
    slab_ref = np.stack([ref, ref[::-1], ref.T])
    slab_test = np.stack([test, test[::-1], test.T])
    expected = formula_ssim_map(slab_ref, slab_test)[:, 5:-5, 5:-5].mean()
    assert m.ssim(slab_ref, slab_test) == pytest.approx(expected, abs=1e-10)


def test_ms_ssim_matches_pytorch_msssim_2d_and_3d():
    ref = mni_slice()
    test = degrade(ref, 4)
    res = m.ms_ssim(ref, test)
    expected = reference_ms_ssim(torch.tensor(ref)[None, None], torch.tensor(test)[None, None],
                                 data_range=1.0).item()
    assert res.scales == 5 and res.note == ""
    assert res.value == pytest.approx(expected, abs=1e-5)
    vol = np.stack([ref[:170, :165]] * 161) * np.linspace(0.6, 1, 161)[:, None, None]
    vol_test = np.clip(ndimage.gaussian_filter(vol, 1.0), 0, 1)
    expected3d = reference_ms_ssim(torch.tensor(vol)[None, None],
                                   torch.tensor(vol_test)[None, None], data_range=1.0).item()
    assert m.ms_ssim(vol, vol_test).value == pytest.approx(expected3d, abs=1e-5)


def test_ms_ssim_small_images_use_fewer_scales_or_are_unavailable():
    ref = ct_slice()
    res = m.ms_ssim(ref, degrade(ref))
    assert res.scales == 4 and "4 of 5 scales" in res.note
    assert 0 < res.value < 1
    tiny = m.ms_ssim(ref[:10, :10], ref[:10, :10])
    assert isinstance(tiny, m.Unavailable) and "side" in tiny.reason


def test_identical_and_constant_images_give_inf_psnr():
    ref = ct_slice()
    assert m.psnr(ref, ref) == math.inf
    const = np.full((32, 32), 0.5)
    assert m.psnr(const, const) == math.inf
    vr = m.reference_range(const)
    assert m.psnr(m.to_unit_range(const, vr), m.to_unit_range(const - 0.1, vr)) == pytest.approx(20)


def test_nan_and_shape_mismatch_are_rejected_with_names():
    ref = ct_slice()
    bad = ref.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="sr.nii"):
        m.check_pair(ref, bad, ("hr.nii", "sr.nii"))
    with pytest.raises(InputError, match="shape"):
        m.check_pair(ref, ref[:-1], ("hr.nii", "sr.nii"))


def test_regions_from_masks_and_boxes():
    ref = ct_slice()
    test = degrade(ref)
    region = m.region_mask(ref.shape, boxes=[[(10, 40), (20, 60)], [(80, 90), (0, 10)]])
    assert region.sum() == 30 * 40 + 10 * 10
    direct = 10 * np.log10(1 / np.mean((ref[region] - test[region]) ** 2))
    assert m.psnr(ref, test, region=region) == pytest.approx(direct)
    lesion = ref > 0.6
    both = m.region_mask(ref.shape, lesion, [[(0, 64), (0, 128)]])
    assert both.sum() == lesion[:64].sum()
    expected_ssim = m.ssim_map(ref, test)[both].mean()
    assert m.ssim(ref, test, region=both) == pytest.approx(expected_ssim)
    with pytest.raises(InputError):
        m.region_mask(ref.shape, np.zeros(ref.shape, bool))


def test_local_psnr_map_of_uniform_error_equals_global_psnr():
    ref = ct_slice()
    test = ref + 0.01
    local = m.local_psnr_map(ref, test)
    assert local.shape == ref.shape
    assert np.allclose(local, m.psnr(ref, test))
    assert m.local_psnr_map(ref, ref).max() == pytest.approx(100.0)


def test_slicewise_matches_per_slice_calls():
    ref = np.stack([ct_slice()] * 3)
    test = np.stack([degrade(ct_slice()), ct_slice(), degrade(ct_slice(), 4)])
    values = m.slicewise(m.psnr, ref, test, axis=0)
    assert values[1] == math.inf
    assert values[0] == pytest.approx(m.psnr(ref[0], test[0]))
    assert values[2] < values[0]
