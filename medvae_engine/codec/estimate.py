"""How long a reconstruction will take, predicted before it runs.

The work is counted exactly: the codec's own plan (slices, 2D tiles or 3D windows) and the FLOPs of
one encode + decode of each unit, counted by torch's FLOP counter on a copy of the model on the meta
device (no memory, no compute; global attention's quadratic cost included). Synchronised 2D tiles
(``tiled``) count each tile's convolutions and the local attention of the whole latent (halos
not counted: a few percent at the default tile). The machine's speed is
measured by a short matrix-multiply probe in the run's precision, scaled by the fraction of that peak
the autoencoder reaches (``MODEL_EFFICIENCY``, measured here; docs/benchmarks.md). A prediction,
not a promise: on a busy machine it is good to a factor of about two.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..imaging.volume import Volume
from ..models.autoencoder import AutoencoderKL
from . import tiled
from .memory import choose_roi
from .pipeline import CodecOptions, check_refinable, slice_axis, tile_size, window_side
from .refine import learned_refiner_steps
from .windows import count_windows

# Encode + decode of the KL autoencoder against the matmul probe's FLOP rate on this CPU
# (convolutions via oneDNN, GroupNorm and chunked attention included): the starter ran at 0.6-1.0
# times the probe's rate from 256^2 to 1024^2 (docs/benchmarks.md, "Expected run time").
MODEL_EFFICIENCY = 1.0
LONG_RUN_SECONDS = 60.0  # `medvae reconstruct` announces runs predicted to take longer
PROBE_SIDE = 512
PROBE_SECONDS = 0.2
_PROBE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Predicted cost of one reconstruction."""

    units: int  # model calls: slices, tiles or windows
    unit_shape: tuple[int, ...]  # spatial shape of one call's input
    flops: float  # encode + decode, all units
    gflops_per_s: float  # expected model throughput on this machine
    seconds: float

    def describe(self) -> str:
        """One line for the user: time, work and speed."""
        minutes = self.seconds / 60
        when = f"{minutes:.0f} min" if minutes >= 2 else f"{self.seconds:.0f} s"
        shape = "x".join(map(str, self.unit_shape))
        return (f"expected run time about {when}: {self.units} x {shape} "
                f"({self.flops / 1e12:.1f} TFLOP at about {self.gflops_per_s:.0f} GFLOP/s here)")


def reconstruction_plan(model, volume: Volume, options: CodecOptions,
                        stage: str = "encode") -> tuple[int, tuple[int, ...]]:
    """(number of model calls or tiles, input shape of the first) that ``reconstruct`` will run
    for ``stage``, as the codec plans it: 2D slices whole or in tiles, 3D volumes whole or in
    windows (sized per stage to the memory when no ROI is given)."""
    units, shapes, _ = _plan(model, volume, options, stage)
    return units, shapes[0]


def _plan(model, volume: Volume, options: CodecOptions, stage: str = "encode"):
    """(units, [every distinct unit shape], {shape: count} for synchronised tiles, else None)."""
    f = int(model.factor)
    if model.spatial_dims == 2:
        n, h, w = _slices(model, volume, options)
        synchronised = tiled.supports(model)
        tile = tile_size(h * w, options, synchronised)
        if tile is None:
            return n, [(h, w)], None
        if synchronised:
            grid = tiled.tile_grid((h, w), f, tile)
            boxes = [(f * (y1 - y0), f * (x1 - x0)) for y0, y1, x0, x1 in grid]
            counts = {s: n * boxes.count(s) for s in dict.fromkeys(boxes)}
            return n * len(boxes), list(counts), counts
        side = window_side(tile, f, 1.0 / f)
        units = n * count_windows((h, w), (side, side), options.overlap, f)
        return units, [(min(side, h), min(side, w))], None
    padded = tuple(-(-s // f) * f for s in volume.shape)
    side = window_side(choose_roi(model, options, padded, stage), f, 1.0 / f)
    if all(s <= side for s in padded):
        return 1, [tuple(padded)], None
    window = tuple(min(side, s) for s in padded)
    return count_windows(padded, window, options.overlap, f), [window], None


def _slices(model, volume: Volume, options: CodecOptions) -> tuple[int, int, int]:
    """A 2D model's slice count and padded slice shape."""
    f = int(model.factor)
    axis = slice_axis(volume, options.axis) if volume.ndim == 3 else None
    n = 1 if axis is None else volume.shape[axis]
    h, w = (-(-s // f) * f for i, s in enumerate(volume.shape) if i != axis)
    return n, h, w


def plan_flops(model, volume: Volume, options: CodecOptions) -> float:
    """FLOPs of ``reconstruct``'s plan: every unit's encode + decode; for synchronised tiles each
    tile's convolutions plus the local attention of the whole latent (not each tile's own); and
    the decoder passes of latent refinement when the options ask for it."""
    return _codec_flops(model, volume, options) + _refine_flops(model, volume, options)


def _refine_flops(model, volume: Volume, options: CodecOptions) -> float:
    """Each refinement step, gradient or learned (its small network not counted), runs the
    decoder forward and back (about three forward passes); gradient refinement runs one last
    forward to score the final latent."""
    steps = options.refine + (learned_refiner_steps(model) if options.refiner else 0)
    if not steps:
        return 0.0
    slice_shape = _slices(model, volume, options)[1:] if model.spatial_dims == 2 else None
    check_refinable(model, options, slice_shape)
    units, shapes, _ = _plan(model, volume, options, "refine")
    return units * model_flops(model, shapes[0], "decode") * (3 * steps + bool(options.refine))


def _codec_flops(model, volume: Volume, options: CodecOptions) -> float:
    if model.spatial_dims == 3:  # encode and decode windows are sized to the memory separately
        return sum(units * model_flops(model, shapes[0], stage)
                   for stage in ("encode", "decode")
                   for units, shapes, _ in [_plan(model, volume, options, stage)])
    units, shapes, counts = _plan(model, volume, options)
    if counts is None:
        return units * model_flops(model, shapes[0])
    f, width = model.factor, model.config["ch"] * model.config["ch_mult"][-1]
    total = 0.0
    for shape, count in counts.items():
        tokens = shape[0] * shape[1] // f**2
        total += count * (model_flops(model, shape) - _attention_flops(tokens, tokens, width))
    n, h, w = _slices(model, volume, options)
    keys = tiled.keys_per_query((h // f, w // f), options.attention_window)
    return total + n * _attention_flops(h * w // f**2, keys, width)


def _attention_flops(queries: int, keys: int, width: int) -> float:
    """q k^T and weights @ v in the encoder's and the decoder's mid-block attention."""
    return 2 * 2 * (2.0 * queries * keys * width)


def model_flops(model, shape: tuple[int, ...], stage: str | None = None) -> float:
    """FLOPs of encode + decode (or ``stage`` alone) of one (1, C, *shape) input, counted on a
    meta-device copy; a learned refiner's decoder passes are counted by ``_refine_flops``."""
    with torch.device("meta"):
        twin = AutoencoderKL(**dict(model.config, refiner_steps=0))
    x = torch.empty(1, model.in_channels, *shape, device="meta")
    with FlopCounterMode(display=False) as encoding, torch.no_grad():
        z = twin.encode(x)
    with FlopCounterMode(display=False) as decoding, torch.no_grad():
        twin.decode(z)
    counts = {"encode": encoding.get_total_flops(), "decode": decoding.get_total_flops()}
    return float(counts[stage] if stage else sum(counts.values()))


def probe_gflops(precision: str = "fp32") -> float:
    """Matrix-multiply GFLOP/s of this machine, now, in ``precision`` (a ~0.2 s probe)."""
    dtype = _PROBE_DTYPES.get(precision, torch.float32)
    a = torch.randn(PROBE_SIDE, PROBE_SIDE).to(dtype)
    b = torch.randn(PROBE_SIDE, PROBE_SIDE).to(dtype)
    a @ b  # warm-up
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < PROBE_SECONDS:
        a @ b
        runs += 1
    return 2 * PROBE_SIDE**3 * runs / elapsed / 1e9


def estimate_reconstruction(model, volume: Volume, options: CodecOptions) -> Estimate | None:
    """Predicted cost of ``reconstruct(volume, model, options)`` on the CPU; None for models whose
    architecture this cannot count (baselines, diffusers VAEs), runs on an accelerator, or cannot
    take this volume (the codec then says why)."""
    if not isinstance(model, AutoencoderKL) or any(p.device.type != "cpu" for p in model.parameters()):
        return None
    if volume.ndim not in (2, 3) or (model.spatial_dims == 3 and volume.ndim != 3):
        return None
    units, shape = reconstruction_plan(model, volume, options)
    flops = plan_flops(model, volume, options)
    rate = probe_gflops(options.precision) * MODEL_EFFICIENCY
    return Estimate(units, shape, flops, rate, flops / (rate * 1e9))
