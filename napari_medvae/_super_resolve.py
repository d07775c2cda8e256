"""Qt-free work behind the Super-resolve widget: LR inputs made from HR images, the SR job itself.

A degraded HR image gets the affine that ``hr_affine`` inverts exactly, so the super-resolved result
lands on the HR reference's own grid (same shape, same voxel centres) and the maps compare them
voxel by voxel.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path

import numpy as np

from medvae_engine.errors import InputError, ModelError
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import weights_sha256
from medvae_engine.models.checkpoints import file_sha256
from medvae_engine.runtime.progress import Progress
from medvae_engine.sr.degradations import degrade, lr_scale
from medvae_engine.sr.pipeline import (
    SROptions,
    model_scale,
    reconstruct_reference_steps,
    super_resolve_samples_steps,
    super_resolve_steps,
)
from medvae_engine.sr.unet import load_sr_model

NO_SR_MODEL = ("choose an SR model file: the shipped starter_sr_x4, one trained with "
               "`medvae train-sr` (sr_model.safetensors) or a published latent-sr .ckpt "
               "(see docs/sr.md)")


def in_plane_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    """The axes a 2D model works on: all but the slice axis."""
    return tuple(a for a in range(ndim) if a != axis)


def lr_affine(affine: np.ndarray, axes: tuple[int, ...], scale: int) -> np.ndarray:
    """The affine of a grid ``scale`` times coarser along ``axes``; ``hr_affine`` inverts it."""
    out = np.array(affine, dtype=np.float64, copy=True)
    for a in axes:
        out[:3, 3] += affine[:3, a] * (scale - 1) / 2
        out[:3, a] = affine[:3, a] * scale
    return out


def crop_to_multiple(volume: Volume, axes: tuple[int, ...], scale: int) -> Volume:
    """The volume cut to sides divisible by ``scale`` along ``axes`` (origin unchanged)."""
    index = tuple(slice(0, s - s % scale) if a in axes else slice(None)
                  for a, s in enumerate(volume.shape))
    if any(s < scale for a, s in enumerate(volume.shape) if a in axes):
        raise InputError(f"image {volume.shape} is smaller than the degradation factor {scale}")
    return Volume(np.ascontiguousarray(volume.array[index]), volume.affine, volume.modality,
                  dict(volume.metadata))


def degrade_volume(hr: Volume, kind: str, scale: int, axis: int | None) -> tuple[Volume, Volume]:
    """(LR input, HR reference): every slice across ``axis`` degraded; the reference is ``hr``
    cropped to sides divisible by ``scale``."""
    axes = in_plane_axes(hr.ndim, axis)
    reference = crop_to_multiple(hr, axes, scale)
    array = reference.array.astype(np.float32)
    if axis is None:
        low = degrade(array, kind, scale)
    else:
        low = np.stack([degrade(s, kind, scale) for s in np.moveaxis(array, axis, 0)], axis=axis)
    factor = lr_scale(kind, scale)
    affine = lr_affine(reference.affine, axes, factor) if factor > 1 else reference.affine
    metadata = {k: v for k, v in hr.metadata.items() if k != "source_path"}
    metadata.update(degradation=kind, degradation_scale=scale)
    return Volume(low, affine, hr.modality, metadata), reference


def sr_header(path: str | Path | None) -> dict | None:
    """{"card", "objective"} from an SR safetensors header (no weights loaded), else None."""
    if not path or not Path(path).is_file() or Path(path).suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        if "sr_config" not in meta:
            return None
        return {"card": json.loads(meta.get("card", "{}")),
                "objective": json.loads(meta["sr_config"]).get("objective", "?")}
    except Exception:  # described, not raised: loading reports the full error when run
        return None


def describe_sr_model(path: str | Path | None) -> str:
    """One line about an SR model file for the panel."""
    if not path or not Path(path).is_file():
        return NO_SR_MODEL
    path = Path(path)
    if path.suffix != ".safetensors":
        return f"{path.name}: latent-sr checkpoint (pair it with the autoencoder it was trained on)"
    header = sr_header(path)
    if header is None:
        return f"{path.name}: not an SR model file (running it reports why)"
    card = header["card"]
    ae = Path(str(card.get("autoencoder") or "?")).name
    return (f"{path.name}: x{card.get('scale', '?')}, objective {header['objective']}, "
            f"trained on AE {ae}")


def sr_job_steps(lr: Volume, autoencoder, sr_path: str, options: SROptions,
                 reference: Volume | None = None, reconstruct: bool = False, samples: int = 1,
                 ) -> Generator[Progress, None, dict]:
    """Load the SR model, super-resolve ``lr`` (``samples`` >= 2: their mean and per-voxel SD,
    the uncertainty map), and optionally reconstruct ``reference`` with the autoencoder; returns
    the volumes and provenance for the layers."""
    sr_model = load_sr_model(sr_path)
    scale = model_scale(sr_model, options)
    if reference is not None:
        axis = options.axis if lr.ndim == 3 else None
        expected = tuple(s if a == axis else s * scale for a, s in enumerate(lr.shape))
        if reference.shape != expected:
            raise InputError(f"reference shape {reference.shape} differs from the SR output's "
                             f"{expected} (x{scale})")
    card_scale = sr_model.card.get("scale")
    if options.scale is not None and card_scale is not None and int(card_scale) != scale:
        raise ModelError(f"{sr_path}: the SR model was trained for x{card_scale}, "
                         f"the degradation gives x{scale}")
    sd = None
    if samples >= 2:
        sr, sd = yield from super_resolve_samples_steps(lr, autoencoder, sr_model, options, samples)
    else:
        sr = yield from super_resolve_steps(lr, autoencoder, sr_model, options)
    ae = None
    if reconstruct and reference is not None:
        ae = yield from reconstruct_reference_steps(reference, autoencoder, options)
    expected_ae = sr_model.card.get("autoencoder_sha256")
    ae_sha = weights_sha256(autoencoder)
    provenance = {
        "sr_model": str(sr_path),
        "sr_model_sha256": file_sha256(sr_path),
        "sampler": options.sampler,
        "steps": int(sr.metadata["sr_steps"]),
        "eta": float(options.eta),
        "seed": int(options.seed),
        "scale": int(sr.metadata["sr_scale"]),
        "model": getattr(autoencoder, "name", ""),
        "weights_sha256": ae_sha,
        "factor": int(autoencoder.factor),
        "samples": int(samples),
    }
    mismatch = bool(expected_ae and ae_sha and ae_sha != expected_ae)
    return {"sr": sr, "sd": sd, "ae": ae, "provenance": provenance, "ae_mismatch": mismatch}
