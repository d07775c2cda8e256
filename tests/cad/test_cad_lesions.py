"""Proxy task: real backgrounds, lesions exactly in the label-1 half, at the asked size and contrast."""

import numpy as np
import pytest

from medvae_engine.cad.proxy import (
    ALLOWED_SOURCES,
    FWHM_TO_SIGMA,
    LesionSpec,
    background_crops,
    insert_lesions,
    load_backgrounds,
    spot_cluster,
    thin_line,
)


@pytest.fixture(scope="module")
def stacks():
    return load_backgrounds(("pydicom/CT_small.dcm", "pydicom/MR_small.dcm", "dipy/S0_10slices"))


@pytest.fixture(scope="module")
def crops(stacks):
    return background_crops(40, 48, seed=3, stacks=stacks)


def test_backgrounds_are_real_tissue_crops_from_allowed_sources(stacks, crops):
    images, origins = crops
    assert images.shape == (40, 48, 48) and images.dtype == np.float32
    assert set(origins) <= set(ALLOWED_SOURCES)
    assert len(set(origins)) >= 2
    assert images.min() >= -1 and images.max() <= 1
    assert all(c.std() > 0.02 and (c > -0.9).mean() >= 0.5 for c in images)
    again, _ = background_crops(40, 48, seed=3, stacks=stacks)
    np.testing.assert_array_equal(images, again)


@pytest.mark.parametrize("kind", ["spots", "lines", "mixed"])
def test_lesion_present_exactly_in_label_one_images(crops, kind):
    images, _ = crops
    spec = LesionSpec(kind=kind, contrast=0.15)
    out = insert_lesions(images, spec, seed=1)
    assert out.labels.sum() == len(images) // 2 and set(out.labels.tolist()) == {0, 1}
    diff = out.images - images
    for i, label in enumerate(out.labels):
        if label == 0:
            assert np.all(diff[i] == 0) and np.all(out.profiles[i] == 0) and out.kinds[i] == "none"
        else:
            support = out.profiles[i] > 0
            assert support.any() and np.all(diff[i][~support] == 0)
            assert np.all(diff[i] >= 0) and diff[i].max() > 0
            assert out.kinds[i] in (("spots", "lines") if kind == "mixed" else (kind,))
    if kind == "mixed":
        assert {"spots", "lines"} <= set(out.kinds)


def test_contrast_is_the_peak_added_fraction_of_the_range():
    flat = np.full((6, 40, 40), -0.5, np.float32)  # far from the clip level
    for contrast in (0.05, 0.2):
        out = insert_lesions(flat, LesionSpec(kind="spots", contrast=contrast), seed=0)
        peaks = (out.images - flat).reshape(6, -1).max(axis=1)
        np.testing.assert_allclose(peaks[out.labels == 1], 2 * contrast, rtol=1e-5)
    bright = np.full((2, 40, 40), 0.95, np.float32)
    assert insert_lesions(bright, LesionSpec(contrast=0.5), seed=0).images.max() == 1.0


def _fwhm(profile_1d: np.ndarray) -> float:
    """Width at half maximum of a sampled peak, by linear interpolation of both flanks."""
    peak = int(np.argmax(profile_1d))
    half = profile_1d[peak] / 2
    below = np.flatnonzero(profile_1d < half)
    lo, hi = below[below < peak].max(), below[below > peak].min()
    x_lo = lo + (half - profile_1d[lo]) / (profile_1d[lo + 1] - profile_1d[lo])
    x_hi = hi - 1 + (profile_1d[hi - 1] - half) / (profile_1d[hi - 1] - profile_1d[hi])
    return x_hi - x_lo


@pytest.mark.parametrize("fwhm", [2.0, 4.0])
def test_spot_size_is_the_requested_fwhm(fwhm):
    spec = LesionSpec(kind="spots", spots=1, spot_fwhm=fwhm, cluster_radius=0.0)
    profile = spot_cluster(64, spec, np.random.default_rng(0))
    r, c = np.unravel_index(np.argmax(profile), profile.shape)
    assert profile[r, c] == 1.0
    sigma = fwhm * FWHM_TO_SIGMA
    expected = np.exp(-((np.arange(64) - c) ** 2) / (2 * sigma**2))
    expected[expected < 1e-3] = 0
    np.testing.assert_allclose(profile[r], expected, atol=1e-6)
    # sampled Gaussian: the interpolated width is close to the FWHM asked for
    assert abs(_fwhm(profile[r]) - fwhm) < 0.35 * fwhm


def test_line_is_thin_long_and_of_requested_width():
    spec = LesionSpec(kind="lines", line_width=1.0, line_length=0.4)
    profile = thin_line(64, spec, np.random.default_rng(5))
    ys, xs = np.nonzero(profile >= 0.5)
    extent = np.hypot(np.ptp(ys), np.ptp(xs))
    assert 0.4 * 64 - 3 <= extent <= 0.4 * 64 + 3
    # at half maximum the line covers about length x width pixels
    assert 0.6 * 0.4 * 64 <= (profile >= 0.5).sum() <= 2.0 * 0.4 * 64
    wide = thin_line(64, LesionSpec(kind="lines", line_width=3.0, line_length=0.4),
                     np.random.default_rng(5))
    assert (wide >= 0.5).sum() > 2 * (profile >= 0.5).sum()


def test_invalid_lesion_settings_are_rejected():
    with pytest.raises(ValueError, match="contrast"):
        LesionSpec(contrast=0.0)
    with pytest.raises(ValueError, match="kind"):
        LesionSpec(kind="blob")
