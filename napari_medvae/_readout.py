"""Metric readout of the Maps widget: current slice, whole volume and a drawn region.

Only composes the public functions of `medvae_engine.analysis`; images are mapped to [0, 1] with
the reference's range, as the engine's conventions require.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from psygnal import evented

from medvae_engine.analysis import (
    hallucination,
    psnr,
    reference_range,
    region_mask,
    ssim,
    subband_psnr,
    to_unit_range,
)


@evented
@dataclass
class MetricsState:
    """Rows of the readout: scope -> metric -> value, plus the slice's subband PSNR table."""

    rows: dict = field(default_factory=dict)
    subbands: dict = field(default_factory=dict)
    text: str = ""


def _scores(ref, test, ae, region) -> dict[str, float]:
    out = {"PSNR dB": psnr(ref, test, region=region), "SSIM": ssim(ref, test, region=region)}
    if ae is not None:
        h = hallucination(ref, test, ae, region=region)
        out["hallucinated %"] = 100.0 * h.hallucination_rate
        out["lost %"] = 100.0 * h.loss_rate
    return out


def readout(
    reference: np.ndarray,
    test: np.ndarray,
    ae: np.ndarray | None = None,
    *,
    axis: int | None = None,
    index: int = 0,
    boxes: list | None = None,
    mask: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """(rows, subband table): metrics per scope (slice, volume, region) in [0, 1] units."""
    value_range = reference_range(reference)
    ref, tst = to_unit_range(reference, value_range), to_unit_range(test, value_range)
    ae01 = None if ae is None else to_unit_range(ae, value_range)

    def cut(a):
        return a if a is None or axis is None else np.take(a, index, axis=axis)

    rows = {"slice": _scores(cut(ref), cut(tst), cut(ae01), None)}
    if axis is not None:
        rows["volume"] = _scores(ref, tst, ae01, None)
    region = region_mask(ref.shape, mask, boxes) if (boxes or mask is not None) else None
    if region is not None:
        rows["region"] = _scores(ref, tst, ae01, region)
    return rows, subband_psnr(cut(ref), cut(tst))


def format_readout(rows: dict, subbands: dict) -> str:
    """A compact text table for the widget."""
    lines = []
    for scope, values in rows.items():
        lines.append(f"{scope}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in values.items()))
    if subbands:
        lines.append("subband PSNR dB (slice): " + ", ".join(f"{k} {_fmt(v)}" for k, v in subbands.items()))
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def boxes_from_shapes(shapes_layer, reference_layer) -> list[list[tuple[int, int]]]:
    """Each drawn shape's bounding box in the reference's voxel indices (one per axis)."""
    boxes = []
    shape = reference_layer.data.shape
    for vertices in shapes_layer.data:
        world = np.array([shapes_layer.data_to_world(v) for v in vertices])
        voxels = np.array([reference_layer.world_to_data(w[-reference_layer.ndim:]) for w in world])
        lo = np.clip(np.floor(voxels.min(axis=0) + 0.5), 0, np.array(shape) - 1).astype(int)
        hi = np.clip(np.floor(voxels.max(axis=0) + 0.5) + 1, 1, np.array(shape)).astype(int)
        boxes.append([(int(a), int(b)) for a, b in zip(lo, hi, strict=True)])
    return boxes
