"""One MS-SSIM for the metric and the training loss, checked against pytorch-msssim."""

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim
from scipy import ndimage

from medvae_engine.analysis import metrics as m
from medvae_engine.analysis.msssim import ms_ssim, scales_that_fit
from medvae_engine.training.losses import MsSsimLoss


def mni_slices() -> tuple[np.ndarray, np.ndarray]:
    """Two real 197 x 233 brain MRI slices (odd sides) in [0, 1], and blurred copies."""
    from nilearn.datasets import load_mni152_template

    volume = np.asarray(load_mni152_template(resolution=1).get_fdata())
    ref = np.stack([volume[:, :, 80], volume[:, :, 95]]) / volume.max()
    return ref, np.stack([ndimage.gaussian_filter(r, 1.3) for r in ref])


def test_batched_float64_equals_pytorch_msssim_per_image_on_odd_sides():
    ref, test = mni_slices()
    x, y = torch.from_numpy(ref)[:, None], torch.from_numpy(test)[:, None]
    ours = ms_ssim(x, y)
    taps = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = torch.from_numpy(taps / taps.sum()).view(1, 1, 1, 11)  # pytorch-msssim's, float64
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    weights = list(weights / weights.sum())  # Wang's weights sum to 1.0001; ours are renormalised
    expected = reference_ms_ssim(x, y, data_range=1.0, size_average=False, win=window,
                                 weights=weights)
    assert ours.dtype == torch.float64 and ours.shape == (2,)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)


def test_training_loss_is_one_minus_the_metric():
    """The loss on [-1, 1] images equals 1 - the metric on [0, 1] (odd sides, fewer scales)."""
    ref, test = mni_slices()
    for crop in (np.s_[:, :, :], np.s_[:, 20:121, 30:137]):  # 5 scales; 101 x 107: 4 scales
        r, t = ref[crop], test[crop]
        loss = MsSsimLoss()(torch.from_numpy(2 * r - 1).float()[:, None],
                            torch.from_numpy(2 * t - 1).float()[:, None])
        metric = [m.ms_ssim(a, b).value for a, b in zip(r, t)]
        np.testing.assert_allclose(loss.numpy(), 1 - np.asarray(metric), atol=2e-6)


def test_gradient_is_finite_where_a_scale_is_anticorrelated():
    """Negative contrast-structure is clamped to 0 (MS-SSIM 0) without NaN gradients."""
    ref, _ = mni_slices()
    x = torch.from_numpy(ref[:1, None]).float().requires_grad_()
    y = 1 - x.detach()
    value = ms_ssim(x, y)
    assert value.item() == 0.0
    value.sum().backward()
    assert torch.isfinite(x.grad).all()
    z = x.detach() + 0.05 * torch.randn_like(x)
    z.requires_grad_()
    ms_ssim(x.detach(), z).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_scales_that_fit_and_too_small_images():
    assert [scales_that_fit((s, 400)) for s in (10, 11, 21, 41, 81, 160, 161)] == [0, 1, 2, 3, 4, 4, 5]
    with pytest.raises(ValueError, match="side > 10"):
        ms_ssim(torch.zeros(1, 1, 10, 40), torch.zeros(1, 1, 10, 40))
