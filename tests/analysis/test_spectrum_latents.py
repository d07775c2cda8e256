"""Radial spectrum and multi-scale latent comparison against direct loop computations."""

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from medvae_engine.analysis import compare_latents, radial_spectrum


def ct():
    a = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    return (a - a.min()) / (a.max() - a.min())


def latent_sr_radial_spectrum(img: np.ndarray, n_bins: int) -> list[float]:
    """latent-sr's ``radial_power_spectrum`` formula written out pixel by pixel (the reference).

    Frequency per axis (index - n // 2) / n, radius sqrt(fx^2 + fy^2), n_bins equal bins from 0 to
    the largest radius, a pixel in bin i when lo <= r < hi (so the largest radius is in no bin),
    value = mean log10(P + 1e-12).
    """
    power = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
    h, w = img.shape
    radius = {}
    for i in range(h):
        for j in range(w):
            fy, fx = (i - h // 2) / h, (j - w // 2) / w
            radius[i, j] = np.sqrt(fx**2 + fy**2)
    rmax = max(radius.values())
    edges = np.linspace(0.0, rmax, n_bins + 1)  # their bin edges
    values: list[list[float]] = [[] for _ in range(n_bins)]
    for (i, j), r in radius.items():
        for b in range(n_bins):
            if edges[b] <= r < edges[b + 1]:
                values[b].append(np.log10(power[i, j] + 1e-12))
    return [float(np.mean(v)) for v in values]


@pytest.mark.parametrize("shape", [(128, 100), (127, 90)])
def test_radial_spectrum_equals_latent_sr_formula_on_a_non_square_slice(shape):
    img = ct()[: shape[0], : shape[1]]  # non-square real CT slice: per-axis normalisation matters
    got = radial_spectrum(img, bins=10)
    expected = latent_sr_radial_spectrum(img, 10)
    assert got.shape == (10,)
    assert np.allclose(got, expected, rtol=0, atol=1e-9)


def test_blur_lowers_high_frequency_power():
    img = ct()
    sharp, blurred = radial_spectrum(img), radial_spectrum(ndimage.gaussian_filter(img, 2))
    assert blurred[-1] < sharp[-1] - 1
    assert abs(blurred[0] - sharp[0]) < 0.5


def test_compare_latents_matches_numpy_block_means():
    rng = np.random.default_rng(0)
    hr = rng.standard_normal((3, 16, 16))
    sr = hr + 0.1 * rng.standard_normal(hr.shape)
    rows = compare_latents(sr, hr)
    assert [r["scale"] for r in rows] == [16, 8, 4, 2, 1]
    peak = hr.max() - hr.min()
    for r in rows:
        b = 16 // r["scale"]
        ph = hr.reshape(3, r["scale"], b, r["scale"], b).mean(axis=(2, 4))
        ps = sr.reshape(3, r["scale"], b, r["scale"], b).mean(axis=(2, 4))
        mse = np.mean((ph - ps) ** 2)
        cos = ph.ravel() @ ps.ravel() / np.linalg.norm(ph) / np.linalg.norm(ps)
        assert r["mse"] == pytest.approx(mse)
        assert r["cosine"] == pytest.approx(cos)
        assert r["psnr"] == pytest.approx(10 * np.log10(peak**2 / mse))
    # pooling averages the independent noise away: coarser scales agree better
    assert rows[-1]["mse"] < rows[0]["mse"]
