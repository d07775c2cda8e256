"""Super-resolve images and volumes in an autoencoder's latent space.

LR image -> encoded at its native size -> latent bilinearly upsampled to the HR latent size ->
concatenated with the noisy HR latent as the UNet's condition -> sampled -> decoded. Volumes go
slice by slice along an axis in batches; the result is a Volume in the input's geometry at the HR
spacing (in-plane affine columns divided by the scale, origin moved so voxel centres stay
consistent) and in the input's intensity units. Any autoencoder behind the engine interface works,
and ``pixels`` (an identity codec, factor 1) runs the same diffusion on plain pixels.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Generator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..codec.pipeline import CodecOptions, check_finite, fast_layout, slice_axis
from ..codec.pipeline import reconstruct_steps as codec_reconstruct_steps
from ..data.degradation import resize
from ..errors import InputError, ModelError
from ..imaging.grid import axis_factors, block_affine
from ..imaging.normalization import Normalization, fit_normalization
from ..imaging.volume import Volume
from ..runtime.precision import autocast, model_device
from ..runtime.progress import Progress, run
from .samplers import DEFAULT_STEPS, SAMPLERS, sample_steps
from .schedules import cosine_schedule
from .unet import SRDenoiser

DEFAULT_SCALE = 4


@dataclasses.dataclass(frozen=True)
class SROptions:
    """How to super-resolve; ``steps``/``scale`` None mean the sampler default / the model's scale."""

    sampler: str = "ddim"
    steps: int | None = None
    eta: float = 0.0
    seed: int = 0
    scale: int | None = None
    axis: int | None = None
    batch_size: int = 4
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.scale is not None and self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


def model_scale(sr_model: SRDenoiser, options: SROptions) -> int:
    """The SR factor: the option, else the one the model was trained for, else 4."""
    return int(options.scale or sr_model.card.get("scale") or DEFAULT_SCALE)


def check_pair(autoencoder: nn.Module, sr_model: SRDenoiser) -> None:
    """ModelError unless the SR model was made for latents like this autoencoder's."""
    if autoencoder.spatial_dims != 2:
        raise ModelError(f"{getattr(autoencoder, 'name', 'model')}: super-resolution runs 2D "
                         "autoencoders (volumes slice by slice); this one is 3D")
    if autoencoder.latent_channels != sr_model.latent_channels:
        raise ModelError(
            f"SR model {sr_model.weights_path or ''} denoises {sr_model.latent_channels}-channel "
            f"latents, autoencoder {getattr(autoencoder, 'name', '')} makes "
            f"{autoencoder.latent_channels}")


def lr_multiple(factor: int, scale: int, unet_multiple: int) -> int:
    """LR sides are padded to this: encodable at ``factor`` and giving UNet-sized HR latents."""
    return factor * unet_multiple // math.gcd(scale, unet_multiple)


def encode_images(autoencoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) model-space images -> latents (posterior mean), channels repeated as needed."""
    if autoencoder.in_channels > 1:
        x = x.repeat_interleave(autoencoder.in_channels, dim=1)
    return autoencoder.encode(x.to(model_device(autoencoder))).float()


def decode_latents(autoencoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Latents -> (B, 1, H, W) images (colour channels averaged)."""
    y = autoencoder.decode(z.to(model_device(autoencoder))).float()
    return y.mean(dim=1, keepdim=True) if y.shape[1] > 1 else y


def condition(z_lr: torch.Tensor, hr_size: tuple[int, int]) -> torch.Tensor:
    """The LR latent bilinearly resized to the HR latent size (the UNet's condition channels)."""
    if tuple(z_lr.shape[-2:]) == tuple(hr_size):
        return z_lr
    return F.interpolate(z_lr, size=hr_size, mode="bilinear", align_corners=False)


def upsample_bicubic(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) images bicubic-resized to ``size`` with PIL (the bench's bicubic baseline)."""
    return torch.from_numpy(np.stack([resize(x[0].float().cpu().numpy(), size, "bicubic")
                                      for x in lr]))[:, None]


def condition_latents(autoencoder: nn.Module, lr: torch.Tensor, scale: int,
                      conditioning: str) -> torch.Tensor:
    """The condition latent at the HR latent size for (B, 1, h, w) model-space LR images:
    ``latent`` (latent-sr) encodes the LR image and bilinearly upsamples its latent, ``pixel``
    (the MedVAE paper) bicubic-upsamples the LR image to the HR size and encodes that."""
    hr = tuple(s * scale for s in lr.shape[-2:])
    if conditioning == "pixel":
        return encode_images(autoencoder, upsample_bicubic(lr, hr))
    z_lr = encode_images(autoencoder, lr)
    return condition(z_lr, tuple(s // int(autoencoder.factor) for s in hr))


def sample_latents_steps(sr_model: SRDenoiser, cond: torch.Tensor, sampler: str, steps: int,
                         generators: list[torch.Generator], eta: float = 0.0):
    """Sample HR latents for a batch of condition latents; one noise generator per batch item.

    The diffusion runs in the model's normalised space; the result is mapped back to latents.
    """
    schedule = cosine_schedule(sr_model.train_steps)
    model_cond = sr_model.normalize_condition(cond)

    def predict(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sr_model(z, model_cond, t).float()

    x = yield from sample_steps(sampler, predict, tuple(cond.shape), schedule, sr_model.objective,
                                steps, generators, eta=eta, table=sr_model.latent_sr_alphas,
                                device=cond.device)
    return sr_model.from_target(x, cond)


def super_resolve_images_steps(lr: torch.Tensor, autoencoder: nn.Module, sr_model: SRDenoiser,
                               scale: int, sampler: str, steps: int,
                               generators: list[torch.Generator], eta: float = 0.0):
    """(B, 1, h, w) LR images in model space -> (B, 1, scale*h, scale*w); yields sampler steps."""
    h, w = lr.shape[-2:]
    m = lr_multiple(int(autoencoder.factor), scale, sr_model.multiple)
    padded = F.pad(lr, (0, (-w) % m, 0, (-h) % m), mode="replicate") if (h % m or w % m) else lr
    with torch.no_grad():
        cond = condition_latents(autoencoder, padded, scale, sr_model.conditioning)
        cond = cond.to(model_device(sr_model))
        z_hr = yield from sample_latents_steps(sr_model, cond, sampler, steps, generators, eta)
        y = decode_latents(autoencoder, z_hr)
    return y[..., : scale * h, : scale * w]


def super_resolve_steps(volume: Volume, autoencoder: nn.Module, sr_model: SRDenoiser,
                        options: SROptions | None = None, *,
                        normalization: Normalization | None = None
                        ) -> Generator[Progress, None, Volume]:
    """Super-resolve a 2D image or a volume slice-wise; yields Progress per sampler step."""
    opts = options or SROptions()
    check_pair(autoencoder, sr_model)
    source = volume.metadata.get("source_path", "input")
    check_finite(volume.array, source)
    scale = model_scale(sr_model, opts)
    steps = opts.steps or DEFAULT_STEPS[opts.sampler]
    if opts.sampler != "flow" and steps > sr_model.train_steps:
        raise InputError(f"--steps {steps} exceeds the model's {sr_model.train_steps} training steps")
    if (opts.sampler == "flow") != (sr_model.objective == "flow"):
        raise InputError(f"sampler {opts.sampler!r} does not fit this SR model (objective "
                         f"{sr_model.objective}); use "
                         f"{'flow' if sr_model.objective == 'flow' else 'ddim, ddpm or latent-sr'}")
    norm = normalization or fit_normalization(volume.array, volume.modality)
    x = norm.forward(volume.array)
    axis = slice_axis(volume, opts.axis) if volume.ndim == 3 else None
    stack = x[None] if axis is None else np.moveaxis(x, axis, 0)
    n = stack.shape[0]
    batches = range(0, n, opts.batch_size)
    total = len(batches) * steps
    outs = []
    for b, start in enumerate(batches):
        batch = torch.from_numpy(np.ascontiguousarray(stack[start : start + opts.batch_size]))
        batch = fast_layout(autoencoder, batch[:, None], opts.precision)  # the codec's layout
        generators = [torch.Generator().manual_seed(opts.seed * 1_000_003 + start + k)
                      for k in range(batch.shape[0])]
        with autocast(sr_model, opts.precision):
            work = super_resolve_images_steps(batch, autoencoder, sr_model, scale,
                                              opts.sampler, steps, generators, opts.eta)
            y = yield from _progress(work, b * steps, total)
        outs.append(y[:, 0].float().cpu().numpy())
    hr = np.concatenate(outs)
    out = hr[0] if axis is None else np.moveaxis(hr, 0, axis)
    in_plane = tuple(a for a in range(volume.ndim) if a != axis)
    metadata = {k: v for k, v in volume.metadata.items() if k != "source_path"}
    metadata.update(sr_scale=scale, sr_sampler=opts.sampler, sr_steps=steps, sr_seed=opts.seed,
                    model=getattr(autoencoder, "name", ""))
    affine = block_affine(volume.affine, axis_factors(volume.ndim, in_plane, 1 / scale))  # finer grid
    return Volume(norm.inverse(out), affine, volume.modality, metadata)


def super_resolve_samples_steps(volume: Volume, autoencoder: nn.Module, sr_model: SRDenoiser,
                                options: SROptions | None = None, samples: int = 2, *,
                                normalization: Normalization | None = None
                                ) -> Generator[Progress, None, tuple[Volume, Volume]]:
    """``samples`` (>= 2) draws with seeds seed, seed + 1, ...: (their mean, their per-voxel
    standard deviation with ddof 1), both in the input's units on the output grid; the SD is
    where the model is unsure, usable without a high-resolution truth."""
    opts = options or SROptions()
    if samples < 2:
        raise InputError(f"--samples {samples}: the uncertainty map needs at least 2 samples "
                         "(omit --samples for one)")
    draws = []
    for i in range(samples):
        work = super_resolve_steps(volume, autoencoder, sr_model,
                                   dataclasses.replace(opts, seed=opts.seed + i),
                                   normalization=normalization)
        try:
            while True:
                p = next(work)
                yield Progress(i * p.total + p.done, samples * p.total,
                               f"super-resolve sample {i + 1}/{samples}")
        except StopIteration as stop:
            draws.append(stop.value)
    stack = np.stack([d.array.astype(np.float64) for d in draws])
    first = draws[0]
    mean = Volume(stack.mean(0).astype(np.float32), first.affine, first.modality,
                  {**first.metadata, "sr_samples": samples})
    sd_meta = {**first.metadata, "sr_samples": samples, "quantity": "sr_sd",
               "units": "input intensity units (per-voxel SD over samples)"}
    sd = Volume(stack.std(0, ddof=1).astype(np.float32), first.affine, first.modality, sd_meta)
    return mean, sd


def _progress(work, offset: int, total: int):
    """Re-yield a sampler's step counts as Progress of the whole job."""
    try:
        while True:
            done = next(work)
            yield Progress(offset + done, total, "super-resolve")
    except StopIteration as stop:
        return stop.value


def super_resolve(volume: Volume, autoencoder: nn.Module, sr_model: SRDenoiser,
                  options: SROptions | None = None,
                  progress: Callable[[Progress], None] | None = None,
                  cancel: threading.Event | None = None) -> Volume:
    """Plain-function form of ``super_resolve_steps`` with a progress callback and cancel event."""
    return run(super_resolve_steps(volume, autoencoder, sr_model, options), progress, cancel)


def reconstruct_reference_steps(reference: Volume, autoencoder: nn.Module,
                                options: SROptions | None = None):
    """The autoencoder's reconstruction of the HR reference: the ceiling for hallucination maps."""
    opts = options or SROptions()
    codec_options = CodecOptions(axis=opts.axis, batch_size=opts.batch_size,
                                 precision=opts.precision)
    return codec_reconstruct_steps(reference, autoencoder, codec_options)
