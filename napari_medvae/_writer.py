"""npe2 writers: image and labels layers to NIfTI (or MHA/NRRD) in the source geometry; latent
layers to medvae latent files (NIfTI + JSON sidecar) that decode back to the image."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_error

from medvae_engine.errors import MedVAEError
from medvae_engine.imaging.io import write_volume
from medvae_engine.latents import save_latent

from ._layers import META_KEY, attributes_to_volume, layer_to_latent


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one image layer; a latent layer becomes a latent file. Errors become notifications."""
    return _guarded(path, data, attributes, labels=False)


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one labels layer as an integer NIfTI in its image's geometry."""
    return _guarded(path, data, attributes, labels=True)


def _guarded(path: str, data: Any, attributes: dict, labels: bool) -> list[str]:
    try:
        return [str(write_layer(path, data, attributes, labels))]
    except MedVAEError as e:
        show_error(str(e))
        return []


def write_layer(path: str, data: Any, attributes: dict, labels: bool = False):
    """Write a layer's data to ``path`` using the geometry in its metadata and scale/translate."""
    meta = attributes.get("metadata", {}).get(META_KEY)
    if meta is not None and meta.get("kind") == "latent":
        return save_latent(layer_to_latent(np.asarray(data), meta), path)
    volume = attributes_to_volume(np.asarray(data), attributes)
    return write_volume(volume, path, dtype="int16" if labels else None)
