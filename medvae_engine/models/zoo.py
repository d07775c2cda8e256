"""The model zoo: every named model's architecture, source, weights file and checksum.

The single source of truth for model configurations. Official weights come from the Hugging Face
repo ``stanfordmimi/MedVAE`` and are looked up in the cache folder (``MEDVAE_HOME``); starter weights
ship inside the package.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..errors import ModelError
from .autoencoder import OFFICIAL_NORM_GROUPS, AutoencoderKL

HUB_REPO = "stanfordmimi/MedVAE"
PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Architecture and provenance of one named model."""

    name: str
    spatial_dims: int
    factor: int
    latent_channels: int
    in_channels: int
    ch: int
    ch_mult: tuple[int, ...]
    source: str  # "official" or "starter"
    filename: str  # file name in the cache folder (official) or the package (starter)
    hub_file: str | None = None
    sha256: str | None = None
    num_res_blocks: int = 2
    norm_groups: int = OFFICIAL_NORM_GROUPS
    shortcut: bool = False  # interpolation shortcut (AutoencoderKL): starters only
    refiner_steps: int = 0  # learned latent refiner steps (models/refiner.py): starters only
    description: str = ""
    # `medvae bench quality`'s goal: mean PSNR margin over interpolation (2D: bicubic; 3D: the
    # better of trilinear and cubic spline), in dB, on held-out real images; None: no goal
    target_margin_db: float | None = None

    def config(self) -> dict:
        """Keyword arguments of AutoencoderKL for this model."""
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.in_channels,
            "ch": self.ch,
            "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "z_channels": self.latent_channels,
            "projection": True,
            "norm_groups": self.norm_groups,
            "shortcut": self.shortcut,
            "refiner_steps": self.refiner_steps,
        }

    def build(self) -> AutoencoderKL:
        """The architecture with freshly initialised weights."""
        return AutoencoderKL(**self.config())

    def local_path(self) -> Path:
        """Where the weights are expected on this machine."""
        if self.source == "starter":
            return PACKAGE_WEIGHTS / self.filename
        return cache_dir() / self.filename

    @property
    def available(self) -> bool:
        return self.local_path().is_file()


def cache_dir() -> Path:
    """The weights cache folder: ``$MEDVAE_HOME`` or ~/.cache/medvae."""
    return Path(os.environ.get("MEDVAE_HOME", Path.home() / ".cache" / "medvae")).expanduser()


def _official(name, dims, f, c, in_ch, hub_name, description):
    ch_mult = (1, 2, 4) if f == 4 else (1, 2, 4, 4)
    return ModelSpec(
        name,
        dims,
        f,
        c,
        in_ch,
        128,
        ch_mult,
        "official",
        hub_name,
        hub_file=f"model_weights/{hub_name}",
        description=description,
    )


def _starter_checksums() -> dict[str, str]:
    """sha256 of the shipped starter weights (written by scripts/install_starter.py)."""
    path = PACKAGE_WEIGHTS / "checksums.json"
    return json.loads(path.read_text()) if path.is_file() else {}


_STARTER_SHA256 = _starter_checksums()


STARTER_NORM_GROUPS = 8  # width 32 with 4 channels a group (the official 32 groups would be 1)


def _starter(name, dims, c, description, target_margin_db, shortcut=False, refiner_steps=0):
    return ModelSpec(
        name, dims, 4, c, 1, 32, (1, 2, 4), "starter", f"{name}.safetensors",
        sha256=_STARTER_SHA256.get(name), norm_groups=STARTER_NORM_GROUPS, shortcut=shortcut,
        refiner_steps=refiner_steps, description=description, target_margin_db=target_margin_db,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _official("medvae_4_1_2d", 2, 4, 1, 1, "vae_4x_1c_2D.ckpt", "official 2D, 16x compression"),
        _official(
            "medvae_4_3_2d", 2, 4, 3, 3, "vae_4x_3c_2D.ckpt", "official 2D, LoRA, 3 latent channels"
        ),
        _official(
            "medvae_4_4_2d", 2, 4, 4, 1, "vae_4x_4c_2D.ckpt",
            "official 2D, 4 latent channels, 1-channel images (config medvae_4x4.yaml)",
        ),
        _official("medvae_8_1_2d", 2, 8, 1, 1, "vae_8x_1c_2D.ckpt", "official 2D, 64x compression"),
        _official(
            "medvae_8_4_2d", 2, 8, 4, 3, "vae_8x_4c_2D.ckpt", "official 2D, LoRA, 4 latent channels"
        ),
        _official("medvae_4_1_3d", 3, 4, 1, 1, "vae_4x_1c_3D.ckpt", "official 3D, 64x compression"),
        _official(
            "medvae_8_1_3d", 3, 8, 1, 1, "vae_8x_1c_3D.ckpt", "official 3D, 512x compression"
        ),
        _starter("starter_4_1_2d", 2, 1,
                 "starter 2D, 16x, bicubic shortcut, trained on bundled real images", 1.0,
                 shortcut=True),
        _starter("starter_4_3_2d", 2, 3,
                 "starter 2D, 3 latent channels, 1-channel images, bicubic shortcut", 4.0,
                 shortcut=True),
        _starter("starter_4_1_3d", 3, 1,
                 "starter 3D, 64x, tricubic shortcut, learned latent refiner (3 steps)", 1.0,
                 shortcut=True, refiner_steps=3),
    )
}

DEFAULT_2D = "starter_4_1_2d"
DEFAULT_3D = "starter_4_1_3d"


@dataclasses.dataclass(frozen=True)
class SRModelSpec:
    """A shipped super-resolution model and the autoencoder whose latent space it denoises in."""

    name: str
    autoencoder: str
    scale: int
    filename: str
    sha256: str | None = None
    description: str = ""

    def local_path(self) -> Path:
        """The weights file inside the package."""
        return PACKAGE_WEIGHTS / self.filename

    @property
    def available(self) -> bool:
        return self.local_path().is_file()


SR_MODELS: dict[str, SRModelSpec] = {
    "starter_sr_x4": SRModelSpec(
        "starter_sr_x4", "starter_4_3_2d", 4, "starter_sr_x4.safetensors",
        _STARTER_SHA256.get("starter_sr_x4"),
        "starter x4 latent-diffusion SR in starter_4_3_2d's latent space",
    ),
}
DEFAULT_SR = "starter_sr_x4"


def get_spec(name: str) -> ModelSpec:
    """The spec of a named model; ModelError listing the known names otherwise."""

    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def list_models() -> list[dict]:
    """One record per named autoencoder, with whether its weights are on this machine."""
    return [
        {
            "name": s.name,
            "spatial_dims": s.spatial_dims,
            "factor": s.factor,
            "latent_channels": s.latent_channels,
            "in_channels": s.in_channels,
            "source": s.source,
            "available": s.available,
            "path": str(s.local_path()),
            "description": s.description,
        }
        for s in MODELS.values()
    ]


def list_sr_models() -> list[dict]:
    """One record per named super-resolution model, with whether its weights are here."""
    return [
        {
            "name": s.name,
            "scale": s.scale,
            "autoencoder": s.autoencoder,
            "available": s.available,
            "path": str(s.local_path()),
            "description": s.description,
        }
        for s in SR_MODELS.values()
    ]
