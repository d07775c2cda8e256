"""Hallucination / loss detection against an autoencoder noise floor (FACTS section 2).

D = test - reference (SR - HR). The noise floor tau = mean|AE - HR| + k * std|AE - HR| is what the
autoencoder alone already gets wrong; a voxel is *hallucinated* where D > tau (the test adds
intensity that is not there) and *lost* where D < -tau (it removes intensity that is).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError

NONE, HALLUCINATED, LOST = 0, 1, 2
LABEL_NAMES = {NONE: "none", HALLUCINATED: "hallucinated", LOST: "lost"}


@dataclasses.dataclass
class HallucinationResult:
    """Rates are voxel fractions of the region; magnitudes are mean |D| over those voxels."""

    tau: float
    k: float
    hallucination_rate: float
    loss_rate: float
    hallucination_magnitude: float
    loss_magnitude: float
    labels: np.ndarray  # uint8: 0 none, 1 hallucinated, 2 lost (outside the region: 0)

    def scalars(self) -> dict[str, float]:
        """Every field but the label map, for tables and JSON."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "labels"}


def noise_floor(reference: np.ndarray, ae: np.ndarray, k: float = 2.0,
                region: np.ndarray | None = None) -> float:
    """tau = mean|AE - HR| + k * std|AE - HR| (population std) over the region."""
    e = np.abs(np.asarray(ae, np.float64) - np.asarray(reference, np.float64))
    if region is not None:
        e = e[region]
    return float(e.mean() + k * e.std())


def hallucination(
    reference: np.ndarray,
    test: np.ndarray,
    ae: np.ndarray,
    k: float = 2.0,
    region: np.ndarray | None = None,
) -> HallucinationResult:
    """Hallucinated and lost voxels of ``test`` against ``reference`` given the AE reconstruction.

    All three arrays share one shape and scale ([0, 1] for 2D images). ``region`` restricts
    rates, magnitudes and tau to a boolean mask.
    """
    shapes = {np.shape(reference), np.shape(test), np.shape(ae)}
    if len(shapes) != 1:
        raise InputError(f"reference, test and AE shapes differ: {sorted(shapes)}")
    tau = noise_floor(reference, ae, k, region)
    d = np.asarray(test, np.float64) - np.asarray(reference, np.float64)
    inside = np.ones(d.shape, bool) if region is None else np.asarray(region, bool)
    hall = (d > tau) & inside
    lost = (d < -tau) & inside
    labels = np.zeros(d.shape, np.uint8)
    labels[hall] = HALLUCINATED
    labels[lost] = LOST
    n = int(inside.sum())
    return HallucinationResult(
        tau=tau,
        k=float(k),
        hallucination_rate=float(hall.sum() / n),
        loss_rate=float(lost.sum() / n),
        hallucination_magnitude=float(np.abs(d[hall]).mean()) if hall.any() else 0.0,
        loss_magnitude=float(np.abs(d[lost]).mean()) if lost.any() else 0.0,
        labels=labels,
    )
