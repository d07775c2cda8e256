"""Sliding windows with Gaussian blending, for 3D volumes and huge 2D images.

Windows start on multiples of the model factor so latent and image grids stay aligned; the last
window of every axis ends exactly at the (padded) edge.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch

GAUSSIAN_SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3


def window_starts(size: int, window: int, overlap: float, step_multiple: int) -> list[int]:
    """Start offsets covering [0, size) with windows of ``window`` and the given overlap."""
    if window >= size:
        return [0]
    stride = max(step_multiple, int(window * (1.0 - overlap)) // step_multiple * step_multiple)
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


def gaussian_weights(shape: tuple[int, ...]) -> torch.Tensor:
    """Separable Gaussian importance map (sigma = size/8), 1 at the centre, floored at MIN_WEIGHT."""
    w = torch.ones(())
    for n in shape:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
        g = torch.exp(-0.5 * (x / max(n * GAUSSIAN_SIGMA_SCALE, 1e-6)) ** 2)
        w = w[..., None] * g
    return w.clamp_min(MIN_WEIGHT)


def blend(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    window: tuple[int, ...],
    overlap: float,
    in_multiple: int,
    scale: float,
) -> Iterator[tuple[int, int, torch.Tensor | None]]:
    """Apply ``fn`` to overlapping windows of ``x`` (B, C, *spatial) and blend the outputs.

    ``fn`` maps a window of size w to size w*scale (scale = 1/f to encode, f to decode) and runs
    on whatever device it likes (the model's); each output is copied to the host and blended there,
    so memory on the device holds one window. Yields (done, total, None) after every window and
    finally (total, total, result) on the CPU.
    """
    spatial = x.shape[2:]
    window = tuple(min(w, s) for w, s in zip(window, spatial))
    starts = [window_starts(s, w, overlap, in_multiple) for s, w in zip(spatial, window)]
    grid = list(itertools.product(*starts))
    out_window = tuple(round(w * scale) for w in window)
    weights = gaussian_weights(out_window)
    acc = norm = None
    for i, start in enumerate(grid):
        src = (slice(None), slice(None)) + tuple(slice(s, s + w) for s, w in zip(start, window))
        y = fn(x[src]).float().cpu()
        if acc is None:
            out_shape = tuple(round(s * scale) for s in spatial)
            acc = torch.zeros((*y.shape[:2], *out_shape))
            norm = torch.zeros(out_shape)
        dst = (slice(None), slice(None)) + tuple(
            slice(round(s * scale), round(s * scale) + w) for s, w in zip(start, out_window)
        )
        acc[dst] += y * weights
        norm[dst[2:]] += weights
        yield i + 1, len(grid), None
    yield len(grid), len(grid), acc / norm


def count_windows(
    shape: tuple[int, ...], window: tuple[int, ...], overlap: float, multiple: int
) -> int:
    """How many windows ``blend`` will use for a padded shape."""
    return int(
        np.prod(
            [len(window_starts(s, min(w, s), overlap, multiple)) for s, w in zip(shape, window)]
        )
    )
