"""npe2 writers: image and labels layers to NIfTI (or MHA/NRRD) in the source geometry; latent
layers to medvae latent files (NIfTI + JSON sidecar) that decode back to the image; image layers
to a new derived DICOM series (a folder), de-identified as every layer the plugin reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info

from medvae_engine.codec.latents import save_latent
from medvae_engine.errors import InputError, MedVAEError
from medvae_engine.imaging.dicom_write import dicom_source_note, write_dicom_series
from medvae_engine.imaging.io import write_volume

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


def write_dicom(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one image layer as a new DICOM series in the folder ``path`` (errors notified)."""
    try:
        meta = attributes.get("metadata", {}).get(META_KEY) or {}
        if meta.get("kind") == "latent":
            raise InputError(f"{path}: a latent layer cannot be written as DICOM; save it as "
                             ".nii.gz, or decode it first")
        volume = attributes_to_volume(np.asarray(data), attributes, attributes.get("name", "layer"))
        note = dicom_source_note(volume)
        if note:
            show_info(f"{path}: {note}")
        limits = attributes.get("contrast_limits")
        window = (float(limits[0]), float(limits[1])) if limits is not None else None
        description = series_description(meta, attributes.get("name", "layer"))
        return [str(write_dicom_series(volume, path, description=description, window=window))]
    except MedVAEError as e:
        show_error(str(e))
        return []


def series_description(meta: dict, name: str) -> str:
    """SeriesDescription naming what the layer is and the model that made it."""
    kind = meta.get("kind") or "image"
    if kind == "super-resolution":
        return f"MedVAE SR x{meta.get('scale', '')} {Path(str(meta.get('sr_model', ''))).stem}"
    if kind == "map":
        return f"MedVAE map {meta.get('map', '')} {name}"
    if meta.get("model"):
        return f"MedVAE {kind} {meta['model']}"
    return f"MedVAE {kind} {name}"
