"""Engine Volumes and Latents <-> napari layer data, keeping the full geometry.

Display convention: a layer's world axes are the image's own voxel axes in millimetres, i.e.
``scale`` is the voxel spacing and ``translate`` the origin expressed along the (unit) direction
cosines of those axes. Layers derived from one image (reconstruction, latent, maps) share its
direction cosines, so they overlay exactly. The complete 4x4 RAS affine travels in the layer's
metadata, so writers restore it including direction cosines and the out-of-plane origin of 2D
images; a layer moved or rescaled in napari is written where it is shown.

Radiological display (see `_radiology`): each layer also gets a napari ``affine`` that only flips
voxel axes so they grow towards patient Left, Posterior or Inferior; the viewer's axis order (set
by `_display`) then shows axial, coronal or sagittal views with patient right on screen left. The
flips are display only: data keep their voxel order and writers use scale, translate and the stored
affine, never the display one. Images open in their modality's reading window (`_radiology`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from medvae_engine.codec.latents import Latent
from medvae_engine.errors import InputError
from medvae_engine.imaging.volume import Volume

from ._radiology import anatomical_axes, display_affine, opening_preset, plane_of, preset_limits

META_KEY = "medvae"
DIVERGING_MAPS = ("difference",)
MAP_PERCENTILE = 99.5
NAPARI_WORLD = "napari_world"  # Volume metadata flag: geometry taken from a plain napari layer
PROVENANCE = ("model", "weights_sha256", "factor", "normalization", "source_path")


def display_geometry(affine: np.ndarray, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, translate) of a layer showing ``ndim`` voxel axes of a 4x4 voxel->RAS affine."""
    columns = np.asarray(affine, np.float64)[:3, :ndim]
    scale = np.linalg.norm(columns, axis=0)
    units = columns / np.where(scale > 0, scale, 1.0)
    translate = units.T @ np.asarray(affine, np.float64)[:3, 3]
    return tuple(float(s) for s in scale), tuple(float(t) for t in translate)


def layer_affine(meta: dict[str, Any], scale, translate) -> np.ndarray:
    """The 4x4 RAS affine of a layer: the stored one, updated if the layer was moved or rescaled."""
    stored = np.asarray(meta["affine"], np.float64)
    ndim = len(meta["shown_scale"])
    scale = np.asarray(scale, np.float64)[-ndim:]
    translate = np.asarray(translate, np.float64)[-ndim:]
    if np.allclose(scale, meta["shown_scale"]) and np.allclose(translate, meta["shown_translate"]):
        return stored
    columns = stored[:3, :ndim]
    units = columns / np.linalg.norm(columns, axis=0)
    affine = stored.copy()
    affine[:3, :ndim] = units * scale
    affine[:3, 3] = stored[:3, 3] + units @ (translate - np.asarray(meta["shown_translate"]))
    return affine


def _base_meta(affine: np.ndarray, ndim: int, kind: str, metadata: dict, **extra: Any) -> dict:
    scale, translate = display_geometry(affine, ndim)
    meta = {
        "kind": kind,
        "affine": np.asarray(affine, np.float64).tolist(),
        "shown_scale": list(scale),
        "shown_translate": list(translate),
        **extra,
    }
    if not metadata.get(NAPARI_WORLD):  # made from a napari layer of unknown anatomy: shown as is
        axes, signs = anatomical_axes(affine, ndim)
        meta.update(ras_axes=axes, ras_signs=signs, plane=plane_of(axes),
                    oriented=extra.get("modality") != "xray")  # X-rays carry no patient axes
    return meta


def _display_affine(meta: dict, lead: int = 0) -> list[list[float]]:
    """The display flips of a layer (none for layers derived from napari layers of unknown anatomy,
    which must stay where their source is shown)."""
    if "ras_signs" not in meta:
        return np.eye(lead + len(meta["shown_scale"]) + 1).tolist()
    return display_affine(meta["ras_signs"], lead)


def volume_to_layer_data(volume: Volume, name: str, kind: str = "image", **extra: Any) -> tuple:
    """A napari (data, attributes, layer_type) tuple for a Volume; ``kind`` labels its role."""
    meta = _base_meta(
        volume.affine, volume.ndim, kind, volume.metadata, modality=volume.modality,
        source_metadata=dict(volume.metadata), **extra,
    )
    attributes: dict[str, Any] = {
        "name": name,
        "scale": meta["shown_scale"],
        "translate": meta["shown_translate"],
        "affine": _display_affine(meta),
        "units": "mm",
        "metadata": {META_KEY: meta},
    }
    if kind == "labels":
        return np.asarray(volume.array).astype(np.uint8), attributes, "labels"
    data = np.asarray(volume.array, np.float32)
    if extra.get("map"):
        attributes["contrast_limits"] = _limits(data, extra.get("map"))
    else:
        meta["window"] = opening_preset(volume.modality, volume.metadata)
        attributes["contrast_limits"] = list(preset_limits(meta["window"], data))
    if extra.get("map") in DIVERGING_MAPS:
        attributes["colormap"], attributes["blending"] = diverging_colormap(), "translucent"
    elif extra.get("map"):
        attributes["colormap"], attributes["blending"] = "inferno", "additive"
    else:
        attributes["colormap"] = "gray"
    return data, attributes, "image"


def diverging_colormap():
    """Blue (negative) -> transparent (0) -> red (positive): a signed map that overlays anatomy."""
    from napari.utils.colormaps import Colormap  # napari starts Qt: imported when a viewer is used

    colors = [[0.1, 0.4, 1.0, 1.0], [0.5, 0.5, 0.5, 0.0], [1.0, 0.2, 0.1, 1.0]]
    return Colormap(colors=colors, name="medvae_diverging", display_name="blue-clear-red")


def _limits(data: np.ndarray, map_kind: str | None) -> list[float]:
    """Contrast limits: symmetric around 0 for signed maps, 0..p99.5 for error maps, else min..max.

    Maps use a high percentile so that a few extreme voxels (edges) do not wash out the rest.
    """
    if map_kind in DIVERGING_MAPS:
        bound = float(np.percentile(np.abs(data), MAP_PERCENTILE)) or float(np.max(np.abs(data))) or 1.0
        return [-bound, bound]
    if map_kind:
        return [0.0, float(np.percentile(data, MAP_PERCENTILE)) or float(np.max(data)) or 1.0]
    lo, hi = float(np.min(data)), float(np.max(data))
    return [lo, hi if hi > lo else lo + 1.0]


def latent_to_layer_data(latent: Latent, name: str) -> tuple:
    """An image layer over the anatomy: voxel j covers image voxels [f*j, f*j+f-1] in world space.

    One latent channel is shown as a plain spatial layer; several channels get a leading channel
    axis (a slider) in front of the spatial axes, which napari aligns with the image's trailing axes.
    3D-model latents (stored RAS) are shown in the image's own voxel order, so they overlay it.
    """
    spatial = len(latent.image_shape)
    array, affine = latent.in_image_order()
    meta = _base_meta(affine, spatial, "latent", latent.metadata,
                      latent=dataclasses.replace(latent, array=None),
                      model=latent.model, weights_sha256=latent.weights_sha256,
                      factors=list(latent.factors), normalization=latent.normalization.to_dict())
    data = array[0] if array.shape[0] == 1 else array
    lead = data.ndim - spatial
    attributes = {
        "name": name,
        "scale": [1.0] * lead + meta["shown_scale"],
        "translate": [0.0] * lead + meta["shown_translate"],
        "affine": _display_affine(meta, lead),
        "units": "mm",
        "metadata": {META_KEY: meta},
        "colormap": "viridis",
        "contrast_limits": _limits(data, None),
    }
    return np.asarray(data, np.float32), attributes, "image"


def layer_kind(layer) -> str | None:
    """The role recorded by this plugin, or None for a layer it did not make."""
    return layer.metadata.get(META_KEY, {}).get("kind")


def layer_to_volume(layer) -> Volume:
    """A Volume from an image or labels layer in its current geometry (any source, not only ours)."""
    if getattr(layer, "rgb", False):
        raise InputError(f"layer '{layer.name}' is RGB; medvae works on grayscale images")
    attributes = {"metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate}
    return attributes_to_volume(np.asarray(layer.data), attributes, layer.name)


def attributes_to_volume(data: np.ndarray, attributes: dict, name: str = "layer") -> Volume:
    """A Volume from layer data and attributes (ours carry the full affine, others scale/translate)."""
    if data.ndim not in (2, 3):
        raise InputError(f"layer '{name}' has {data.ndim} dimensions; 2D or 3D images only")
    meta = attributes.get("metadata", {}).get(META_KEY)
    scale, translate = attributes.get("scale"), attributes.get("translate")
    if meta is None or meta.get("kind") == "latent":
        affine = np.eye(4)
        for i in range(data.ndim):
            affine[i, i] = 1.0 if scale is None else float(scale[-data.ndim + i])
            affine[i, 3] = 0.0 if translate is None else float(translate[-data.ndim + i])
        return Volume(data, affine, "other", {"layer": name, NAPARI_WORLD: True})
    affine = layer_affine(meta, meta["shown_scale"] if scale is None else scale,
                          meta["shown_translate"] if translate is None else translate)
    metadata = dict(meta.get("source_metadata", {}))
    metadata.update({k: meta[k] for k in PROVENANCE if k in meta})
    return Volume(data, affine, meta.get("modality", "other"), metadata)


def layer_to_latent(data: np.ndarray, meta: dict[str, Any]) -> Latent:
    """The Latent behind a latent layer's data and metadata (channel axis and voxel order restored)."""
    latent: Latent = meta["latent"]
    array = np.asarray(data, np.float32)
    if array.ndim == len(latent.image_shape):
        array = array[None]
    return dataclasses.replace(latent, array=latent.from_image_order(array))


def slab(volume: Volume, axis: int, index: int) -> Volume:
    """The one-voxel-thick slab ``index`` along ``axis`` of a 3D Volume, placed where it lies."""
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, axis] * index
    array = np.take(volume.array, [index], axis=axis)
    return Volume(array, affine, volume.modality, dict(volume.metadata))


def provenance(latent: Latent) -> dict[str, Any]:
    """Metadata that says how a derived layer was made (model, weights checksum, factor, norm)."""
    return {
        "model": latent.model,
        "weights_sha256": latent.weights_sha256,
        "factor": int(max(latent.factors)),
        "normalization": latent.normalization.to_dict(),
    }


def add_layers(viewer, layer_data: list[tuple]) -> Iterator:
    """Create every layer first (nothing half-added if creation fails), then add one per step.

    Returned as an iterator so a job runner can add one layer per event-loop turn; the layers
    are created before the first step, so a failure adds nothing.
    """
    from napari.layers import Layer  # napari starts Qt: imported when a viewer is used

    layers = [Layer.create(data, attributes, kind) for data, attributes, kind in layer_data]

    def steps():
        for layer in layers:
            viewer.add_layer(layer)
            yield layer

    return steps()
