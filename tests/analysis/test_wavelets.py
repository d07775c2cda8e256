"""Wavelet subband PSNR and subband error maps against independent pywt computations."""

import math

import numpy as np
import pydicom
import pytest
import pywt
from scipy import ndimage

from medvae_engine.analysis import subband_error_maps, subband_psnr
from medvae_engine.analysis.wavelets import SUBBANDS_2D, subband_psnr_slices


def ct_pair():
    a = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    ref = (a - a.min()) / (a.max() - a.min())
    test = np.clip(ndimage.gaussian_filter(ref, 1.0), 0, 1)
    return ref, test


def test_subband_psnr_matches_three_successive_dwt2():
    ref, test = ct_pair()
    got = subband_psnr(ref, test)
    assert tuple(got) == SUBBANDS_2D
    expected = {}
    r, t = ref, test
    for level in (1, 2, 3):
        r, (rh, rv, rd) = pywt.dwt2(r, "haar")
        t, (th, tv, td) = pywt.dwt2(t, "haar")
        for name, rc, tc in (("LH", rh, th), ("HL", rv, tv), ("HH", rd, td)):
            mse = np.mean((rc - tc) ** 2)
            expected[f"{name}{level}"] = 10 * np.log10(np.abs(rc).max() ** 2 / mse)
    expected["LL3"] = 10 * np.log10(np.abs(r).max() ** 2 / np.mean((r - t) ** 2))
    for name in SUBBANDS_2D:
        assert got[name] == pytest.approx(expected[name]), name
    # blur removes fine detail: the finest diagonal band suffers most
    assert got["HH1"] < got["LL3"]


def test_identical_images_give_inf_in_every_subband():
    ref, _ = ct_pair()
    assert all(v == math.inf for v in subband_psnr(ref, ref).values())


def test_subband_error_maps_isolate_each_subband_and_sum_to_the_error():
    ref, test = ct_pair()
    ref, test = ref[:125, :127], test[:125, :127]  # odd sides: exact crop back
    maps = subband_error_maps(ref, test)
    assert set(maps) == set(SUBBANDS_2D)
    assert all(v.shape == ref.shape for v in maps.values())
    assert np.allclose(sum(maps.values()), test - ref, atol=1e-10)
    full = subband_error_maps(ref[:120, :120], test[:120, :120])
    coeffs = pywt.wavedec2(full["LH2"], "haar", level=3)
    diff = pywt.wavedec2(test[:120, :120], "haar", level=3)[2][0] - pywt.wavedec2(
        ref[:120, :120], "haar", level=3)[2][0]
    assert np.allclose(coeffs[2][0], diff)
    assert np.abs(coeffs[0]).max() < 1e-10 and np.abs(coeffs[3][2]).max() < 1e-10


def test_volume_subbands_per_slice_and_3d():
    ref, test = ct_pair()
    vol_r = np.stack([ref[:64, :64], ref[64:, 64:]], axis=2)
    vol_t = np.stack([test[:64, :64], test[64:, 64:]], axis=2)
    per_slice = subband_psnr_slices(vol_r, vol_t, axis=2)
    assert per_slice["HH1"][1] == pytest.approx(subband_psnr(ref[64:, 64:], test[64:, 64:])["HH1"])
    three_d = subband_psnr(vol_r[:, :, [0, 1, 0, 1, 0, 1, 0, 1]], vol_t[:, :, [0, 1] * 4])
    assert len(three_d) == 1 + 7 * 3 and "LLL3" in three_d and "HHH1" in three_d
    maps = subband_error_maps(vol_r, vol_t, axis=2)
    assert maps["HH1"].shape == vol_r.shape
    assert np.allclose(sum(maps.values()), vol_t - vol_r)
