"""npe2 reader: NIfTI, DICOM file or series folder, MHA/NRRD images and medvae latent files.

Images become layers whose scale and translate come from the voxel spacing and origin (see
`_layers`); the source metadata and full affine ride along in the layer metadata. A file that
fails to read shows a napari error notification naming the file and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_error

from medvae_engine.codec.latents import load_latent, sidecar_path
from medvae_engine.data.files import VOLUME_SUFFIXES
from medvae_engine.errors import MedVAEError
from medvae_engine.imaging.atomic import full_suffix
from medvae_engine.imaging.dicom import is_dicom_file
from medvae_engine.imaging.io import read_volume

from ._display import install_on_current_viewer
from ._layers import latent_to_layer_data, volume_to_layer_data

NULL_LAYER = [(None,)]  # npe2: "handled, no layer" (the error was shown as a notification)


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The reader function when ``path`` is something this plugin reads, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_accepts(Path(p)) for p in paths):
        return None
    return read_paths


def _accepts(path: Path) -> bool:
    if path.is_dir():
        return any(is_dicom_file(p) for p in list(_files(path))[:20])
    return full_suffix(path) in VOLUME_SUFFIXES  # napari reads pictures itself


def _files(folder: Path):
    return (p for p in sorted(folder.iterdir()) if p.is_file())


def read_paths(path: str | list[str]) -> list[tuple]:
    """Layer data tuples for every path; unreadable files show an error and add nothing."""
    paths = [path] if isinstance(path, str) else list(path)
    install_on_current_viewer()  # radiological view, letters, scale bar, window keys
    try:
        return [read_layer_data(Path(p)) for p in paths]
    except MedVAEError as e:
        show_error(str(e))
        return NULL_LAYER


def read_layer_data(path: Path) -> tuple:
    """One layer data tuple: a latent layer for medvae latent files, an image layer otherwise."""
    name = _stem(path)
    if is_latent_file(path):
        return latent_to_layer_data(load_latent(path), name)
    volume = read_volume(path)
    return volume_to_layer_data(volume, name, "image", source_path=str(path))


def is_latent_file(path: Path) -> bool:
    """A NIfTI next to a JSON sidecar that declares a medvae latent."""
    side = sidecar_path(path)
    if full_suffix(path) not in (".nii", ".nii.gz") or not side.is_file():
        return False
    try:
        return json.loads(side.read_text()).get("format") == "medvae-latent"
    except (OSError, ValueError, AttributeError):
        return False


def _stem(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
