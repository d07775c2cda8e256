"""MS-SSIM (Wang et al. 2003) in differentiable torch: the one implementation behind the metric
(``metrics.ms_ssim``, float64 on numpy arrays) and the training loss (``training.losses``).

Images are (B, C, H, W) or (B, C, D, H, W). Each scale filters with the 'valid' 11-tap Gaussian
(sigma 1.5), K1 = 0.01, K2 = 0.03, averages contrast-structure (times luminance at the coarsest
scale) over channels and voxels, clamps it at 0, then average-pools by 2 with one zero on each end
of odd sides, as pytorch-msssim does. The five standard scales need every side > 160; smaller
images use the scales that fit with the weights renormalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WIN, SSIM_SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03


def scales_that_fit(spatial_shape: Sequence[int], scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many of ``scales`` fit: scale k needs every side > 10 * 2^k (0: not even one)."""
    side = min(spatial_shape)
    fit = 0
    while fit < scales and side > (SSIM_WIN - 1) * 2**fit:
        fit += 1
    return fit


def _gaussian() -> list[float]:
    """The 11 normalised Gaussian taps (sigma 1.5), computed in float64."""
    taps = torch.arange(SSIM_WIN, dtype=torch.float64) - SSIM_WIN // 2
    g = torch.exp(-(taps**2) / (2 * SSIM_SIGMA**2))
    return (g / g.sum()).tolist()


def _blur(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """'Valid' separable Gaussian filtering along every spatial axis: a weighted sum of shifted
    views accumulated in place (as fast as scipy's correlate1d; a float64 convolution is 5-10x
    slower on the CPU)."""
    for axis in range(2, x.ndim):
        n = x.shape[axis] - SSIM_WIN + 1
        out = x.narrow(axis, 0, n) * taps[0]
        for k in range(1, SSIM_WIN):
            out.add_(x.narrow(axis, k, n), alpha=taps[k])
        x = out
    return x


def _halve(x: torch.Tensor) -> torch.Tensor:
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    return pool(x, 2, padding=[s % 2 for s in x.shape[2:]])


def _power(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values ** weights with 0 ** w = 0 and a finite gradient there (no NaN from w * 0^(w-1))."""
    positive = values > 0
    return torch.where(positive, torch.where(positive, values, 1.0) ** weights, 0.0)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
            scales: int = len(MS_SSIM_WEIGHTS)) -> torch.Tensor:
    """Per-image MS-SSIM of two (B, C, *spatial) batches (2 or 3 spatial axes), differentiable.

    Computed in float32 or wider outside autocast: local variances are differences of large terms
    that bf16 would cancel into noise. Raises ValueError when a side is 10 or less.
    """
    fit = scales_that_fit(x.shape[2:], scales)
    if fit == 0:
        raise ValueError(f"MS-SSIM needs every side > {SSIM_WIN - 1}, got shape {tuple(x.shape[2:])}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.to(dtype), y.to(dtype)
        g = _gaussian()
        weights = torch.tensor(MS_SSIM_WEIGHTS[:fit], device=x.device, dtype=dtype)
        weights = weights / weights.sum()
        c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
        values = []
        for level in range(fit):
            mx, my = _blur(x, g), _blur(y, g)
            vx = (_blur(x * x, g) - mx**2).clamp_min(0)
            vy = (_blur(y * y, g) - my**2).clamp_min(0)
            cxy = _blur(x * y, g) - mx * my
            cs = (2 * cxy + c2) / (vx + vy + c2)
            if level == fit - 1:
                cs = cs * (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            values.append(F.relu(cs.flatten(1).mean(1)))
            if level < fit - 1:
                x, y = _halve(x), _halve(y)
        return torch.prod(_power(torch.stack(values, dim=1), weights), dim=1)
