"""Multi-scale comparison of two latents (e.g. super-resolved vs high-resolution, FACTS 2).

Both latents are average-pooled to sides 64, 32, ..., 1 (only sides not larger than the latent);
at each scale: MSE, cosine similarity of the flattened latents, and PSNR whose peak is the value
range (max - min) of the full-resolution reference latent, since latents are not bounded; one peak
for all scales keeps the PSNRs comparable across scales.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import psnr_from_mse

DEFAULT_SCALES = (64, 32, 16, 8, 4, 2, 1)


def _pool(latent: torch.Tensor, side: int) -> torch.Tensor:
    spatial = latent.ndim - 2
    pool = F.adaptive_avg_pool2d if spatial == 2 else F.adaptive_avg_pool3d
    return pool(latent, side)


def compare_latents(
    test: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    scales: tuple[int, ...] = DEFAULT_SCALES,
) -> list[dict[str, float]]:
    """Per scale: {'scale', 'mse', 'cosine', 'psnr'} for two latents (C,H,W) or (C,D,H,W)."""
    t = torch.as_tensor(np.asarray(test), dtype=torch.float64)
    r = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    if t.shape != r.shape:
        raise ValueError(f"latent shapes differ: {tuple(t.shape)} vs {tuple(r.shape)}")
    if t.ndim not in (3, 4):
        raise ValueError(f"latents must be (C,H,W) or (C,D,H,W), got shape {tuple(t.shape)}")
    t, r = t[None], r[None]
    peak = float(r.max() - r.min())
    rows = []
    for side in scales:
        if side > min(t.shape[2:]):
            continue
        pt, pr = _pool(t, side), _pool(r, side)
        err = float(((pt - pr) ** 2).mean())
        cos = float(F.cosine_similarity(pt.flatten(1), pr.flatten(1), dim=1, eps=1e-12).mean())
        rows.append({"scale": side, "mse": err, "cosine": cos, "psnr": psnr_from_mse(err, peak)})
    return rows

