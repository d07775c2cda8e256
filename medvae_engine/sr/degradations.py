"""Making LR images from HR ones for training and evaluation.

``bicubic`` and ``lanczos`` downsample by the factor s (antialiased, as PIL resizes; latent-sr made
its LR sets with PIL); ``blur`` is the MRNet-style refinement task: Gaussian blur, downsample by s,
upsample back to the HR size, so the LR image keeps the HR grid.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

DEGRADATIONS = ("bicubic", "lanczos", "blur")
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def resize(image: np.ndarray, shape: tuple[int, int], kind: str = "bicubic") -> np.ndarray:
    """A 2D float image resized with PIL's bicubic or Lanczos filter (float32 throughout)."""
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (int(shape[1]), int(shape[0])), FILTERS[kind])
    return np.asarray(out, dtype=np.float32)


def degrade(hr: np.ndarray, kind: str, scale: int, sigma: float | None = None) -> np.ndarray:
    """The LR counterpart of a 2D HR image (sides divisible by ``scale``)."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {kind!r}")
    h, w = hr.shape
    if h % scale or w % scale:
        raise ValueError(f"HR size {hr.shape} is not divisible by the scale {scale}")
    small = (h // scale, w // scale)
    if kind != "blur":
        return resize(hr, small, kind)
    blurred = ndimage.gaussian_filter(hr.astype(np.float32), sigma or scale / 2, mode="reflect")
    return resize(resize(blurred, small, "bicubic"), (h, w), "bicubic")


def lr_scale(kind: str, scale: int) -> int:
    """How many times larger the HR image is than the LR one (1 for the refinement task)."""
    return 1 if kind == "blur" else scale
