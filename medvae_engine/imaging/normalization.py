"""Modality-aware, invertible intensity normalisation between image units and model space [-1, 1].

The single source of truth for how intensities enter and leave every model in the project.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError

CT_WINDOW = (-1000.0, 1000.0)  # official MedVAE 3D CT preprocessing
MRI_PERCENTILES = (0.5, 99.5)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Linear map of [lo, hi] in image units onto [-1, 1]; values outside are clipped.

    ``kind`` records how lo/hi were chosen (``window``, ``minmax`` or ``percentile``) so the
    sidecar of a latent file says it. A constant image (lo == hi) maps to 0 and back to lo.
    """

    kind: str
    lo: float
    hi: float

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Image units -> model space [-1, 1] as float32."""
        a = np.asarray(array, dtype=np.float32)
        if self.hi <= self.lo:
            return np.zeros_like(a)
        scaled = (np.clip(a, self.lo, self.hi) - self.lo) / (self.hi - self.lo)
        return (scaled * 2.0 - 1.0).astype(np.float32)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Model space -> image units as float32 (model outputs are clipped to [-1, 1] first)."""
        a = np.clip(np.asarray(array, dtype=np.float32), -1.0, 1.0)
        if self.hi <= self.lo:
            return np.full_like(a, self.lo)
        return ((a + 1.0) / 2.0 * (self.hi - self.lo) + self.lo).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "lo": float(self.lo), "hi": float(self.hi)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(str(d["kind"]), float(d["lo"]), float(d["hi"]))


def fit_normalization(
    array: np.ndarray,
    modality: str,
    *,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] | None = None,
) -> Normalization:
    """Choose the normalisation for ``array`` of ``modality`` (ct, mri, xray, other).

    CT uses a fixed HU window (default [-1000, 1000]); MRI uses min-max unless ``percentiles`` are
    given; X-ray and other images use min-max. An explicit ``window`` wins for any modality.
    """
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise InputError(f"--window LO HI needs HI > LO, got LO={lo:g} HI={hi:g}")
        return Normalization("window", lo, hi)
    if modality == "ct":
        return Normalization("window", *CT_WINDOW)
    finite = np.asarray(array, dtype=np.float64)
    if modality == "mri" and percentiles is not None:
        lo, hi = np.percentile(finite, percentiles)
        return Normalization("percentile", float(lo), float(hi))
    return Normalization("minmax", float(finite.min()), float(finite.max()))
