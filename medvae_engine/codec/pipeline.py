"""Encode, decode and reconstruct Volumes in their own geometry and intensity units.

2D models run slice-wise along a chosen axis in batches, large images in tiles with the whole image's
GroupNorm statistics (``tiled``: linear in pixels, local mid-block attention); 3D models
see the volume in RAS voxel order, as the official tool's loaders give it (axis permutations and
flips only), and run whole or in Gaussian-blended sliding windows so memory grows with the window,
not the volume. Every output comes back in the input's own voxel order and affine.
Inputs are padded at the end of every axis (edge values) to a multiple of the factor and cropped
back exactly. Every operation is a generator yielding ``Progress`` (``*_steps``) with a plain
function on top that accepts a progress callback and a cancel event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..imaging.normalization import Normalization, fit_normalization
from ..imaging.orientation import MODEL_ORIENTATION, axcodes, reorient
from ..imaging.volume import Volume
from ..models import MODELS, AutoencoderKL, load_model, weights_sha256
from ..runtime.precision import PRECISIONS, autocast, model_device
from ..runtime.progress import Progress, run
from . import tiled
from .baselines import BASELINES, get_baseline
from .latents import Latent
from .memory import choose_roi
from .refine import learned_refiner_steps, refine_latent
from .windows import blend, count_windows

DEFAULT_OVERLAP = 0.25
WHOLE_IMAGE_LIMIT = 2048 * 2048  # models without synchronised tiles: whole up to this many pixels
DEFAULT_TILE = 1024  # their tile side above it
TILED_ABOVE = 512 * 512  # autoencoders: slices larger than this run in synchronised tiles ...
SYNC_TILE = 512  # ... of this side (docs/benchmarks.md, "Large 2D images in tiles")


@dataclasses.dataclass(frozen=True)
class CodecOptions:
    """How to run a model over a Volume; defaults are deterministic and memory-bounded."""

    axis: int | None = None  # slice axis for 2D models on volumes; None: the coarsest axis
    batch_size: int = 8
    precision: str = "fp32"
    roi: int | None = None  # 3D window side; None: the largest that fits (codec/memory.py)
    max_memory: int | None = None  # bytes the process may peak at; None: what is available
    overlap: float = DEFAULT_OVERLAP
    tile: int | None = None  # 2D tile side; None: tiles above TILED_ABOVE pixels (see tile_size)
    whole: bool = False  # 2D slices whole at any size (global attention: quadratic in pixels)
    attention_window: int | None = tiled.ATTENTION_WINDOW  # latent tokens a side, tiled 2D
    sample: bool = False  # draw z from the posterior instead of its mean
    seed: int = 0
    refine: int = 0  # encoder-side latent refinement steps (codec/refine.py); 0: the encoder's z
    refiner: bool = True  # run the model's learned latent refiner, if it has one (models/refiner.py)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1 or (self.roi is not None and self.roi < 1):
            raise ValueError("batch_size and roi must be positive")
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"tile must be positive, got {self.tile}")
        if self.max_memory is not None and self.max_memory < 1:
            raise ValueError("max_memory must be positive")
        if self.refine < 0:
            raise ValueError(f"refine must be 0 or more steps, got {self.refine}")


def encode(volume: Volume, model, options: CodecOptions | None = None, **kw) -> Latent:
    """Volume -> Latent (see ``encode_steps``); ``progress``/``cancel`` keywords as in ``run``."""
    progress, cancel = kw.pop("progress", None), kw.pop("cancel", None)
    return run(encode_steps(volume, model, options, **kw), progress, cancel)


def decode(latent: Latent, model=None, options: CodecOptions | None = None, **kw) -> Volume:
    """Latent -> Volume in the original geometry and units; the model comes from the sidecar."""
    progress, cancel = kw.pop("progress", None), kw.pop("cancel", None)
    return run(decode_steps(latent, model, options), progress, cancel)


def reconstruct(volume: Volume, model, options: CodecOptions | None = None, **kw) -> Volume:
    """Encode then decode: the model's reconstruction in the input's geometry and units."""
    progress, cancel = kw.pop("progress", None), kw.pop("cancel", None)
    return run(reconstruct_steps(volume, model, options, **kw), progress, cancel)


def reconstruct_steps(
    volume: Volume, model, options: CodecOptions | None = None, **kw
) -> Generator[Progress, None, Volume]:
    latent = yield from encode_steps(volume, model, options, **kw)
    return (yield from decode_steps(latent, model, options))


def encode_steps(
    volume: Volume,
    model,
    options: CodecOptions | None = None,
    *,
    normalization: Normalization | None = None,
    modality: str | None = None,
) -> Generator[Progress, None, Latent]:
    """Normalise, pad, run the encoder slice-wise or windowed, and describe how to undo it."""
    opts = options or CodecOptions()
    if model.spatial_dims == 2:  # encode_slices_steps checks refinement with the slice shape
        job = prepare_slices(volume, model, opts, normalization=normalization, modality=modality)
        (latent,) = yield from encode_slices_steps([job], model, opts)
        return latent
    check_refinable(model, opts)
    source = volume.metadata.get("source_path", "input")
    check_finite(volume.array, source)
    modality = modality or volume.modality
    norm = normalization or fit_normalization(volume.array, modality)
    x = norm.forward(volume.array)
    f = int(model.factor)
    if volume.ndim != 3:
        raise InputError(f"{source}: a 2D image cannot go through the 3D model {model_name(model)}")
    image_orientation = axcodes(volume.affine)  # None: no direction to orient by
    orientation = MODEL_ORIENTATION if image_orientation else None
    if orientation:
        x = reorient(x, image_orientation, orientation)
    padded_x = pad_to_multiple(x, f, axes=(0, 1, 2))
    t = torch.from_numpy(padded_x)[None, None]
    refining = bool(opts.refine or (opts.refiner and learned_refiner_steps(model)))
    if refining:  # a second channel marks the voxels refinement fits (not the padding)
        t = torch.cat([t, torch.from_numpy(valid_mask(x.shape, padded_x.shape))[None, None]], 1)
    stage = "refine" if refining else "encode"
    z = yield from _volume(t, _encoder(model, opts, masked=refining), opts, f, 1.0 / f,
                           stage, model)
    return _latent(volume, model, norm, modality, z[0], padded_x.shape, (f, f, f), None,
                   orientation, image_orientation, encoding_record(model, opts))


@dataclasses.dataclass(frozen=True)
class SliceJob:
    """A 2D model's input made ready: normalised slices padded to the factor, (S, H, W), and how
    to turn their latents (S, C, h, w) into the image's Latent."""

    stack: np.ndarray
    finish: Callable[[np.ndarray, dict], Latent]  # (latents, encoding_record) -> Latent


def prepare_slices(
    volume: Volume,
    model,
    options: CodecOptions | None = None,
    *,
    normalization: Normalization | None = None,
    modality: str | None = None,
) -> SliceJob:
    """Normalise and pad a 2D image, or a volume's slices along the slice axis, for a 2D model."""
    opts = options or CodecOptions()
    check_finite(volume.array, volume.metadata.get("source_path", "input"))
    modality = modality or volume.modality
    norm = normalization or fit_normalization(volume.array, modality)
    x = norm.forward(volume.array)
    f = int(model.factor)
    axis = slice_axis(volume, opts.axis) if volume.ndim == 3 else None
    stack = x[None] if axis is None else np.moveaxis(x, axis, 0)

    def finish(z: np.ndarray, encoding: dict) -> Latent:
        array = z.transpose(1, 0, 2, 3)  # (C, S, h, w)
        array = array[:, 0] if axis is None else np.moveaxis(array, 1, axis + 1)
        factors = tuple(1 if i == axis else f for i in range(volume.ndim))
        padded = _padded_shape(volume.shape, f, axis)
        return _latent(volume, model, norm, modality, array, padded, factors, axis, None, None,
                       encoding)

    return SliceJob(pad_to_multiple(stack, f, axes=(1, 2)), finish)


def encode_slices_steps(
    jobs: list[SliceJob], model, options: CodecOptions | None = None
) -> Generator[Progress, None, list[Latent]]:
    """Encode the slices of several prepared 2D inputs of one padded slice shape together, in
    batches of ``batch_size`` slices; each input's Latent is what it gets on its own (the model
    sees the same slices; only the batch they share changes)."""
    opts = options or CodecOptions()
    check_refinable(model, opts, jobs[0].stack.shape[-2:])
    if len({j.stack.shape[1:] for j in jobs}) != 1:
        raise ValueError("inputs encoded together need one padded slice shape")
    f = int(model.factor)
    stack = jobs[0].stack if len(jobs) == 1 else np.concatenate([j.stack for j in jobs])
    generator = torch.Generator().manual_seed(opts.seed)
    tiled_enc = _tiled(model, opts, lambda t, tile: tiled.encode_steps(
        model, fast_layout(model, t.repeat_interleave(model.in_channels, dim=1), opts.precision), tile,
        opts.attention_window, sample=opts.sample, generator=generator))
    z = yield from _slices(stack, _encoder(model, opts), opts, f, 1.0 / f, "encode", tiled_enc)
    ends = np.cumsum([len(j.stack) for j in jobs])
    record = encoding_record(model, opts)
    return [j.finish(z[end - len(j.stack) : end], record) for j, end in zip(jobs, ends)]


def _encoder(model, opts: CodecOptions, masked: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's encoder on a (B, 1, ...) batch (``masked``: (B, 2, ...), the second channel the
    voxels refinement fits): channels repeated, options' precision and device, the mean or
    (seeded) posterior samples, refined when the options ask."""
    generator = torch.Generator().manual_seed(opts.seed)

    def enc(t: torch.Tensor) -> torch.Tensor:
        t = t.to(model_device(model))
        t, weight = (t[:, :1], t[:, 1:]) if masked else (t, None)
        x = t.repeat_interleave(model.in_channels, dim=1) if model.in_channels > 1 else t
        x = fast_layout(model, x, opts.precision)
        with torch.no_grad(), autocast(model, opts.precision):
            if opts.refiner or not learned_refiner_steps(model):
                kw = {} if weight is None else {"weight": weight}  # the learned refiner's fit
                z = model.encode(x, sample=opts.sample, generator=generator, **kw).float()
            else:  # the encoder's own latent, the learned refiner left out
                z = model.posterior(*model.moments(x), opts.sample, generator).float()
        if not opts.refine:
            return z
        return refine_latent(model, t, z, opts.refine, opts.precision, weight=weight)

    return enc


def check_refinable(model, opts: CodecOptions, slice_shape: tuple[int, int] | None = None) -> None:
    """Refinement differentiates through the decoder: our autoencoders only, and 2D slices
    (padded ``slice_shape``) that run whole."""
    if not opts.refine:
        return
    if not isinstance(model, AutoencoderKL):
        raise InputError(f"latent refinement needs one of our autoencoders; {model_name(model)} "
                         "is not one (interpolation baselines and foreign VAEs encode in one pass)")
    if slice_shape is not None and tile_size(slice_shape[0] * slice_shape[1], opts) is not None:
        h, w = slice_shape
        raise InputError(f"latent refinement runs on whole slices, and this {h}x{w} slice runs "
                         "in tiles (above 512x512, or a tile side was given): run it whole "
                         "(tile none) or without refinement")


def encoding_record(model, opts: CodecOptions) -> dict:
    """How a latent was made, for its sidecar: the options that change its values (not only its
    speed), so a latent on disk says whether the learned refiner and gradient refinement ran."""
    return {"precision": opts.precision,
            "posterior": f"sample (seed {opts.seed})" if opts.sample else "mean",
            "learned_refiner_steps": learned_refiner_steps(model) if opts.refiner else 0,
            "refine_steps": opts.refine}


def _latent(volume, model, norm, modality, array, padded, factors, axis, orientation,
            image_orientation, encoding: dict) -> Latent:
    return Latent(
        array=np.ascontiguousarray(array, dtype=np.float32),
        image_shape=volume.shape,
        image_affine=volume.affine.copy(),
        padded_shape=tuple(int(p) for p in padded),
        factors=factors,
        normalization=norm,
        model=model_name(model),
        spatial_dims=model.spatial_dims,
        axis=axis,
        weights_sha256=_sha(model),
        weights_path=getattr(model, "weights_path", None),
        modality=modality,
        metadata={k: v for k, v in volume.metadata.items() if k != "source_path"},
        orientation=orientation,
        image_orientation=image_orientation,
        encoding=encoding,
    )


def decode_steps(
    latent: Latent, model=None, options: CodecOptions | None = None
) -> Generator[Progress, None, Volume]:
    """Run the decoder over a Latent, crop the padding and map back to image units."""
    opts = options or CodecOptions()
    model = model if model is not None else model_for_latent(latent)
    check_compatible(latent, model)
    f = int(model.factor)

    def dec(t: torch.Tensor) -> torch.Tensor:
        t = fast_layout(model, t.to(model_device(model)), opts.precision)
        with torch.no_grad(), autocast(model, opts.precision):
            y = model.decode(t).float()
        return y.mean(dim=1, keepdim=True) if y.shape[1] > 1 else y

    shape = latent.image_shape
    if latent.spatial_dims == 2:
        axis = latent.axis
        stack = latent.array[:, None] if axis is None else np.moveaxis(latent.array, axis + 1, 1)
        stack = stack.transpose(1, 0, 2, 3)  # (S, C, h, w)
        tiled_dec = _tiled(model, opts, lambda t, tile: tiled.decode_steps(
            model, fast_layout(model, t, opts.precision), tile,
            opts.attention_window))
        y = yield from _slices(stack, dec, opts, 1, float(f), "decode", tiled_dec)
        y = y[:, 0]  # (S, H, W)
        in_plane = [s for i, s in enumerate(shape) if i != axis]
        y = y[:, : in_plane[0], : in_plane[1]]
        out = y[0] if axis is None else np.moveaxis(y, 0, axis)
    else:
        t = torch.from_numpy(np.ascontiguousarray(latent.array))[None]
        y = yield from _volume(t, dec, opts, 1, float(f), "decode", model)
        out = y[0, 0][tuple(slice(0, s) for s in latent.grid_shape)]
        if latent.orientation:
            out = reorient(out, latent.orientation, latent.image_orientation)
    out = latent.normalization.inverse(out)
    return Volume(
        out, latent.image_affine.copy(), latent.modality, dict(latent.metadata, model=latent.model)
    )


def project_latent(latent: Latent, model) -> Latent:
    """The stage-2 (projected) latent of a stage-1 Latent, for downstream models; not decodable."""
    t = latent.array[None] if latent.spatial_dims == 3 or latent.axis is None else None
    if t is None:  # 2D model on a volume: slices along the axis become the batch
        t = np.moveaxis(latent.array, latent.axis + 1, 0)
    with torch.no_grad():
        out = (
            model.project(torch.from_numpy(np.ascontiguousarray(t)).to(model_device(model)))
            .cpu()
            .numpy()
        )
    out = (
        out[0]
        if latent.spatial_dims == 3 or latent.axis is None
        else np.moveaxis(out, 0, latent.axis + 1)
    )
    return dataclasses.replace(latent, array=out.astype(np.float32), projected=True)


def tile_size(image_pixels: float, opts: CodecOptions, synchronised: bool = True) -> int | None:
    """Side of the 2D tiles for a slice of this many image pixels; None runs it whole.

    ``synchronised``: the model runs in ``tiled``'s tiles (GroupNorm over the whole image, cost
    linear in pixels), from TILED_ABOVE on; other models' tiles are independent (each its own
    GroupNorm statistics), so they run whole up to WHOLE_IMAGE_LIMIT.
    """
    if opts.whole:
        return None
    if opts.tile:
        return opts.tile
    if synchronised:
        return SYNC_TILE if image_pixels > TILED_ABOVE else None
    return DEFAULT_TILE if image_pixels > WHOLE_IMAGE_LIMIT else None


def _tiled(model, opts: CodecOptions, steps):
    """``steps`` (a (1, C, H, W) slice and a tile side -> ``tiled`` generator) run without grad in
    the options' precision, or None for models ``tiled`` cannot run."""
    if not tiled.supports(model):
        return None

    def run_tiles(t: torch.Tensor, tile: int):
        inner = steps(t, tile)
        while True:  # the contexts cover each step only, not the caller's code between them
            with torch.no_grad(), autocast(model, opts.precision):
                try:
                    tick = next(inner)
                except StopIteration as stop:
                    return stop.value.float()
            yield tick

    return run_tiles


def window_side(image_side: int, multiple: int, scale: float) -> int:
    """A tile or window of ``image_side`` image pixels, in the units of the model's input (latent
    voxels when decoding, scale > 1) and on a multiple of ``multiple``."""
    return max(multiple, int(image_side * (1 if scale < 1 else 1 / scale)) // multiple * multiple)


def _slices(stack: np.ndarray, fn, opts: CodecOptions, multiple: int, scale: float, stage: str,
            tiled_fn=None):
    """Run ``fn`` over a stack (S, [C,] H, W) in batches, tiling slices that are too large: with
    ``tiled_fn`` (see ``_tiled``) where given, else in independent blended tiles."""
    if stack.ndim == 3:
        stack = stack[:, None]
    n, _, h, w = stack.shape
    tile = tile_size(h * w * (scale * scale if scale > 1 else 1), opts, tiled_fn is not None)
    outs = []
    if tile is not None and tiled_fn is not None:
        for i in range(n):
            steps = tiled_fn(torch.from_numpy(np.ascontiguousarray(stack[i : i + 1])), tile)
            while True:
                try:
                    done, per = next(steps)
                except StopIteration as stop:
                    outs.append(stop.value.cpu().numpy())
                    break
                yield Progress(i * per + done, n * per, stage)
        return np.concatenate(outs)
    if tile is None:
        total = -(-n // opts.batch_size)
        for i, start in enumerate(range(0, n, opts.batch_size)):
            batch = np.ascontiguousarray(stack[start : start + opts.batch_size])
            outs.append(fn(torch.from_numpy(batch)).cpu().numpy())
            yield Progress(i + 1, total, stage)
        return np.concatenate(outs)
    side = window_side(tile, multiple, scale)
    per = count_windows((h, w), (side, side), opts.overlap, multiple)
    for i in range(n):
        t = torch.from_numpy(np.ascontiguousarray(stack[i : i + 1]))
        for done, _, result in blend(t, fn, (side, side), opts.overlap, multiple, scale):
            if result is None:
                yield Progress(i * per + done, n * per, stage)
        outs.append(result.cpu().numpy())
    return np.concatenate(outs)


def _volume(t: torch.Tensor, fn, opts: CodecOptions, multiple: int, scale: float, stage: str,
            model):
    """Run ``fn`` on a (1, C, D, H, W) tensor whole, or in windows when larger than the ROI (the
    options' or the largest that fits the memory, chosen in image voxels)."""
    image_shape = tuple(round(s * max(scale, 1.0)) for s in t.shape[2:])
    side = window_side(choose_roi(model, opts, image_shape, stage), multiple, scale)
    if all(s <= side for s in t.shape[2:]):
        y = fn(t)
        yield Progress(1, 1, stage)
        return y.cpu().numpy()
    for done, total, result in blend(t, fn, (side,) * 3, opts.overlap, multiple, scale):
        if result is None:
            yield Progress(done, total, stage)
    return result.cpu().numpy()


def _padded_shape(shape: tuple[int, ...], f: int, axis: int | None) -> tuple[int, ...]:
    return tuple(s if i == axis else -(-s // f) * f for i, s in enumerate(shape))


def valid_mask(shape: tuple[int, ...], padded: tuple[int, ...]) -> np.ndarray:
    """1 over the image's own voxels, 0 over the padding ``pad_to_multiple`` adds at the ends."""
    mask = np.zeros(padded, np.float32)
    mask[tuple(slice(0, s) for s in shape)] = 1.0
    return mask


def pad_to_multiple(x: np.ndarray, f: int, axes: tuple[int, ...]) -> np.ndarray:
    """Pad the end of ``axes`` with edge values up to a multiple of ``f``."""
    widths = [(0, (-x.shape[i]) % f if i in axes else 0) for i in range(x.ndim)]
    return np.pad(x, widths, mode="edge") if any(w for _, w in widths) else x


def slice_axis(volume: Volume, axis: int | None) -> int:
    """The axis a 2D model slices along: the given one, else the coarsest (ties: the last)."""
    if axis is not None:
        if not -volume.ndim <= axis < volume.ndim:
            raise InputError(f"axis {axis} is out of range for a {volume.ndim}D volume")
        return axis % volume.ndim
    spacing = np.asarray(volume.spacing)
    return int(np.flatnonzero(np.isclose(spacing, spacing.max()))[-1])


def check_finite(array: np.ndarray, source: str) -> None:
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(f"{source}: contains {bad} NaN/Inf voxels")
    if np.size(array) == 0:
        raise InputError(f"{source}: image is empty")


def check_compatible(latent: Latent, model) -> None:
    """ModelError unless ``model`` can decode ``latent``."""
    if latent.projected:
        raise ModelError(
            "stage-2 (projected) latents cannot be decoded; encode without --projected"
        )
    if latent.spatial_dims != model.spatial_dims or latent.array.shape[0] != model.latent_channels:
        raise ModelError(
            f"latent from {latent.model} ({latent.spatial_dims}D, {latent.array.shape[0]} channels) "
            f"cannot be decoded by {model_name(model)} ({model.spatial_dims}D, "
            f"{model.latent_channels} channels)"
        )
    if max(latent.factors) != model.factor:
        raise ModelError(
            f"latent factor {max(latent.factors)} differs from {model_name(model)}'s {model.factor}"
        )


def model_for_latent(latent: Latent):
    """Load the model named in a latent's sidecar and check its weights checksum."""

    if latent.model in BASELINES:
        return get_baseline(latent.model, latent.spatial_dims, max(latent.factors))
    if latent.model in MODELS:
        model = load_model(latent.model)
    elif latent.weights_path:
        model = load_model(latent.weights_path)
    else:
        raise ModelError(
            f"latent was made by {latent.model!r}; pass the model or its weights to decode it"
        )
    if latent.weights_sha256 and weights_sha256(model) != latent.weights_sha256:
        raise ModelError(
            f"weights {model.weights_path} differ from those that made the latent "
            f"(sha256 {latent.weights_sha256[:12]}...); pass the original weights"
        )
    return model


def model_name(model) -> str:
    return str(getattr(model, "name", type(model).__name__))


def fast_layout(model, x: torch.Tensor, precision: str) -> torch.Tensor:
    """The model and input in the memory layout of ``precision``, set on every call so that a result
    never depends on what the model ran before: channels-last for bf16/fp16 on CPU (oneDNN then
    skips layout reorders), the default layout for fp32.

    Measured here (docs/benchmarks.md): bf16 about 30% faster channels-last. fp32 keeps the default
    layout, which gives results bit-identical to the official code; channels-last would be 15%
    faster in fp32 but differs from it by up to 2.5e-4 (summation order).
    """
    if x.device.type != "cpu" or x.ndim not in (4, 5):
        return x
    if not any(True for _ in model.parameters()):
        return x
    if precision == "fp32":
        fmt = torch.contiguous_format
    else:
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    model.to(memory_format=fmt)
    return x.contiguous(memory_format=fmt)


def _sha(model) -> str | None:
    return weights_sha256(model)
