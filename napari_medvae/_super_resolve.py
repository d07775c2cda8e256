"""Qt-free work behind the Super-resolve widget: LR inputs made from HR images, the SR job itself.

LR inputs come from ``medvae_engine.data.degradation.degrade_volume``: the degraded HR image gets the
block-grid affine that SR inverts exactly, so the super-resolved result lands on the HR reference's
own grid (same shape, same voxel centres) and the maps compare them voxel by voxel.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path

from safetensors import safe_open

from medvae_engine.errors import InputError, ModelError
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import weights_sha256
from medvae_engine.models.checkpoints import file_sha256
from medvae_engine.runtime.progress import Progress
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


def sr_header(path: str | Path | None) -> dict | None:
    """{"card", "objective"} from an SR safetensors header (no weights loaded), else None."""
    if not path or not Path(path).is_file() or Path(path).suffix != ".safetensors":
        return None

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
