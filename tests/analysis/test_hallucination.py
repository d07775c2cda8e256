"""Hallucination / loss labels: tau definition, sign convention, rates on a real CT slice."""

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from medvae_engine.analysis import hallucination
from medvae_engine.analysis.hallucination import HALLUCINATED, LOST


def ct():
    a = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    return (a - a.min()) / (a.max() - a.min())


def test_tau_rates_and_sign_convention():
    ref = ct()
    rng = np.random.default_rng(0)
    ae = np.clip(ref + 0.01 * rng.standard_normal(ref.shape), 0, 1)
    test = ref.copy()
    test[10:20, 10:20] += 0.3  # invented bright structure: hallucinated (D = SR - HR > tau)
    test[60:65, 60:70] -= 0.3  # removed structure: lost
    res = hallucination(ref, test, ae, k=2.0)
    e = np.abs(ae - ref)
    assert res.tau == pytest.approx(e.mean() + 2 * e.std())
    assert np.all(res.labels[10:20, 10:20] == HALLUCINATED)
    assert np.all(res.labels[60:65, 60:70] == LOST)
    assert res.hallucination_rate == pytest.approx(100 / ref.size)
    assert res.loss_rate == pytest.approx(50 / ref.size)
    assert res.hallucination_magnitude == pytest.approx(0.3)
    region = np.zeros(ref.shape, bool)
    region[:40, :40] = True
    inside = hallucination(ref, test, ae, k=2.0, region=region)
    assert inside.loss_rate == 0 and inside.hallucination_rate == pytest.approx(100 / 1600)
    assert not inside.labels[~region].any()


def test_larger_k_flags_fewer_pixels_on_interpolated_ct():
    ref = ct()
    small = ndimage.zoom(ref, 0.25, order=3)
    test = np.clip(ndimage.zoom(small, 4, order=3), 0, 1)
    ae = np.clip(ndimage.gaussian_filter(ref, 0.7), 0, 1)
    rates = [hallucination(ref, test, ae, k).hallucination_rate for k in (1.5, 2.0, 3.0)]
    assert rates[0] > rates[1] > rates[2] > 0
