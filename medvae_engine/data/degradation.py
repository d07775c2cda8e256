"""Making LR images from HR ones: the one degradation of SR training, SR reports and the plugin.

``bicubic`` and ``lanczos`` downsample by the factor s (antialiased, as PIL resizes; latent-sr made
its LR sets with PIL); ``blur`` is the MRNet-style refinement task: Gaussian blur, downsample by s,
upsample back to the HR size, so the LR image keeps the HR grid. ``degrade`` works on one 2D array
(training crops); ``degrade_volume`` crops an image to sides divisible by s, degrades every slice
across the slice axis and gives the LR image the block-grid affine that SR inverts.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import InputError
from ..imaging.grid import axis_factors, block_affine
from ..imaging.volume import Volume

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


def in_plane_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    """The axes a 2D model works on: all but the slice axis."""
    return tuple(a for a in range(ndim) if a != axis)


def crop_to_multiple(volume: Volume, axes: tuple[int, ...], scale: int) -> Volume:
    """The volume cut to sides divisible by ``scale`` along ``axes`` (origin unchanged)."""
    index = tuple(slice(0, s - s % scale) if a in axes else slice(None)
                  for a, s in enumerate(volume.shape))
    if any(s < scale for a, s in enumerate(volume.shape) if a in axes):
        raise InputError(f"image {volume.shape} is smaller than the degradation factor {scale}")
    return Volume(np.ascontiguousarray(volume.array[index]), volume.affine, volume.modality,
                  dict(volume.metadata))


def degrade_volume(hr: Volume, kind: str, scale: int, axis: int | None = None,
                   sigma: float | None = None) -> tuple[Volume, Volume]:
    """(LR input, HR reference): every slice across ``axis`` (None: a 2D image) degraded; the
    reference is ``hr`` cropped to sides divisible by ``scale``, the LR grid its block grid."""
    axes = in_plane_axes(hr.ndim, axis)
    reference = crop_to_multiple(hr, axes, scale)
    array = reference.array.astype(np.float32)
    if axis is None:
        low = degrade(array, kind, scale, sigma)
    else:
        low = np.stack([degrade(s, kind, scale, sigma) for s in np.moveaxis(array, axis, 0)],
                       axis=axis)
    factor = lr_scale(kind, scale)
    affine = block_affine(reference.affine, axis_factors(hr.ndim, axes, factor))
    metadata = {k: v for k, v in hr.metadata.items() if k != "source_path"}
    metadata.update(degradation=kind, degradation_scale=scale)
    return Volume(low, affine, hr.modality, metadata), reference
