"""PNG, JPEG and TIFF images (Pillow and tifffile).

Array order follows the other formats: ``array[i, j]`` with i = column (x) and j = row (y), i.e.
the picture's (rows, cols) transposed; TIFF stacks are (x, y, page). Colour pixels are averaged to
one channel (as the official 1-channel models do) and flagged ``converted_from_rgb``. Without
geometry the affine is 1 mm identity (TIFF resolution tags give the pixel size when present). Files
this package writes carry the exact affine and modality as JSON (a PNG text chunk, the TIFF
description), so they read back unchanged. Float results go back to PNG in a PNG/JPEG source's own
bit depth (rounded, clipped), or through an explicit range mapped to 0..255 (`png_pixels`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin

from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging.atomic import first_line
from medvae_engine.imaging.modality import DECLARED_KEY
from medvae_engine.imaging.volume import MODALITIES, Volume

GEOMETRY_KEY = "medvae"
_MM_PER_UNIT = {2: 25.4, 3: 10.0}  # TIFF ResolutionUnit: inch, centimetre
# ImageJ spells micrometres several ways, including the escaped text "\\u00B5m".
# Pillow modes of 16-bit pictures ("I" is how older Pillow reads 16-bit PNG); other modes are 8-bit.
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")
_IMAGEJ_UNITS_MM = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "micron": 1e-3, "um": 1e-3,
                    "\u00b5m": 1e-3, "\\u00B5m": 1e-3}


def read_picture(path: Path) -> Volume:
    """Read a PNG or JPEG file as a 2D float32 Volume (colour averaged, 16-bit kept)."""
    try:
        with Image.open(path) as img:
            img.load()
            text = dict(getattr(img, "text", {}) or {})
            pixels, converted = _grayscale(img)
            mode = img.mode
    except Exception as exc:
        raise InputError(f"{path}: not a readable image ({first_line(exc)})") from None
    affine, modality = _stored_geometry(text.get(GEOMETRY_KEY), path)
    metadata = {
        "source_path": str(Path(path).resolve()),
        "source_format": "png" if Path(path).suffix.lower() == ".png" else "jpeg",
        "original_dtype": mode,
        DECLARED_KEY: True,  # stored modality, else pictures are X-rays
    }
    if converted:
        metadata["converted_from_rgb"] = True
    array = np.ascontiguousarray(pixels.T, dtype=np.float32)
    return Volume(array, affine if affine is not None else np.eye(4), modality, metadata)


def read_tiff(path: Path) -> Volume:
    """Read a TIFF image (2D) or stack (3D) as a float32 Volume."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            data = series.asarray()
            page = tif.pages[0]
            stored = tif.shaped_metadata[0] if tif.shaped_metadata else None
            imagej = tif.imagej_metadata or {}
            spacing = _tiff_spacing(page, imagej)
            dtype = str(page.dtype)
            colour = page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF file ({first_line(exc)})") from None
    if not colour:
        axes = axes.replace("S", "C")  # extra samples of a grayscale image: a stack, not colour
    pixels, converted = _tiff_planes(np.asarray(data), axes, path)
    affine, modality = _stored_geometry(
        json.dumps(stored[GEOMETRY_KEY]) if stored and GEOMETRY_KEY in stored else None, path
    )
    if affine is None:
        affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    metadata: dict[str, Any] = {
        "source_path": str(Path(path).resolve()),
        "source_format": "tiff",
        "original_dtype": dtype,
        DECLARED_KEY: True,
    }
    if converted:
        metadata["converted_from_rgb"] = True
    array = np.ascontiguousarray(np.moveaxis(pixels, 0, -1).swapaxes(0, 1), dtype=np.float32)
    if array.shape[-1] == 1:
        array = array[:, :, 0]
    return Volume(array, affine, modality, metadata)


def picture_dtype(metadata: dict[str, Any]) -> np.dtype | None:
    """uint8 or uint16: the bit depth of the PNG/JPEG an image was read from; None for others."""
    if metadata.get("source_format") not in ("png", "jpeg"):
        return None
    mode = str(metadata.get("original_dtype", ""))
    if mode == "F":
        return None
    return np.dtype(np.uint16 if mode in _SIXTEEN_BIT_MODES else np.uint8)


def png_pixels(volume: Volume, path: Path, png_range: tuple[float, float] | None = None) -> np.ndarray:
    """What a PNG of ``volume`` holds: ``png_range`` (LO, HI) mapped to 0..255 as uint8, else
    float values in a PNG/JPEG source's own bit depth (rounded, clipped), else the array as is."""
    array = np.asarray(volume.array)
    if png_range is not None:
        lo, hi = (float(v) for v in png_range)
        if not hi > lo:
            raise OutputError(f"{path}: PNG range {lo:g} {hi:g} needs HI greater than LO")
        scaled = (np.asarray(array, dtype=np.float64) - lo) / (hi - lo) * 255.0
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    dtype = picture_dtype(volume.metadata)
    if dtype is not None and array.dtype.kind == "f":
        return np.clip(np.round(array), 0, np.iinfo(dtype).max).astype(dtype)
    return array


def check_png(volume: Volume, path: Path) -> None:
    """Refuse what PNG cannot hold exactly: volumes and values other than integers 0..65535."""
    if volume.ndim != 2:
        raise OutputError(f"{path}: PNG holds 2D images, this volume is {volume.shape}; use .tif")
    array = np.asarray(volume.array)
    if array.dtype in (np.uint8, np.uint16):
        return
    if not np.array_equal(array, np.round(array)) or array.min() < 0 or array.max() > 65535:
        raise OutputError(
            f"{path}: PNG stores integers 0..65535 but the values are "
            f"{float(array.min()):.6g}..{float(array.max()):.6g}; map a range to 0..255 with "
            f"--png-range LO HI, or use .tif or .nii.gz for float data"
        )


def write_png(volume: Volume, path: Path) -> None:
    """Write a 2D Volume of integers in 0..65535 (see `check_png`) as 8- or 16-bit PNG."""
    array = np.asarray(volume.array)
    if array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.uint8 if array.max() <= 255 else np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text(GEOMETRY_KEY, _geometry_json(volume))
    Image.fromarray(np.ascontiguousarray(array.T)).save(path, format="PNG", pnginfo=info)


def write_tiff(volume: Volume, path: Path) -> None:
    """Write a 2D image or 3D stack as TIFF (the array's dtype) with its geometry and modality."""
    array = np.asarray(volume.array)
    planes = array.T if array.ndim == 2 else np.transpose(array, (2, 1, 0))
    spacing = volume.spacing
    tifffile.imwrite(
        path,
        np.ascontiguousarray(planes),
        metadata={GEOMETRY_KEY: json.loads(_geometry_json(volume))},
        resolution=(10.0 / spacing[0], 10.0 / spacing[1]),
        resolutionunit="CENTIMETER",
        photometric="minisblack",  # a stack of 3 or 4 slices is not an RGB image
    )


def _grayscale(img: Image.Image) -> tuple[np.ndarray, bool]:
    """(rows, cols) pixels of any Pillow mode and whether colour channels were averaged."""
    if img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(img), False
    if img.mode == "LA":
        return np.asarray(img)[..., 0], False
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    return np.asarray(img)[..., :3].astype(np.float32).mean(axis=-1), True


def _tiff_planes(data: np.ndarray, axes: str, path: Path) -> tuple[np.ndarray, bool]:
    """(planes, rows, cols) from tifffile's axes string; samples averaged, singletons dropped."""
    converted = False
    if "S" in axes:
        index = axes.index("S")
        if data.shape[index] > 1:
            data = np.take(data, range(min(3, data.shape[index])), axis=index)
            data = data.astype(np.float32).mean(axis=index)
            converted = True
        else:
            data = np.take(data, 0, axis=index)
        axes = axes.replace("S", "")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"{path}: TIFF has no image plane (axes {axes})")
    stack_axes = [i for i, a in enumerate(axes) if a not in "YX" and data.shape[i] > 1]
    if len(stack_axes) > 1:
        raise InputError(
            f"{path}: TIFF has {len(stack_axes) + 2} dimensions (axes {axes}), need 2D or 3D"
        )
    order = stack_axes + [axes.index("Y"), axes.index("X")]
    singletons = [i for i in range(data.ndim) if i not in order]
    data = np.transpose(data, order + singletons).reshape(
        [data.shape[i] for i in order]
    )
    if data.ndim == 2:
        data = data[np.newaxis]
    return data, converted


def _tiff_spacing(page: Any, imagej: dict) -> tuple[float, float, float]:
    """(x, y, z) pixel size in mm from resolution tags and ImageJ metadata, else 1 mm."""
    xy = [1.0, 1.0]
    unit_mm = None
    tag_unit = page.tags.get("ResolutionUnit")
    if tag_unit is not None and int(tag_unit.value) in _MM_PER_UNIT:
        unit_mm = _MM_PER_UNIT[int(tag_unit.value)]
    elif str(imagej.get("unit", "")).strip() in _IMAGEJ_UNITS_MM:
        unit_mm = _IMAGEJ_UNITS_MM[str(imagej["unit"]).strip()]
    if unit_mm is not None:
        for axis, name in enumerate(("XResolution", "YResolution")):
            tag = page.tags.get(name)
            if tag is not None:
                numerator, denominator = tag.value
                if numerator > 0 and denominator > 0:
                    xy[axis] = unit_mm * denominator / numerator
    z = float(imagej.get("spacing", 1.0)) * (unit_mm or 1.0) if "spacing" in imagej else 1.0
    return xy[0], xy[1], z


def _geometry_json(volume: Volume) -> str:
    return json.dumps({"affine": volume.affine.tolist(), "modality": volume.modality})


def _stored_geometry(text: str | None, path: Path) -> tuple[np.ndarray | None, str]:
    """The affine and modality this package stored in a file, or (None, "xray") when absent."""
    if not text:
        return None, "xray"
    try:
        stored = json.loads(text)
        affine = np.asarray(stored["affine"], dtype=np.float64).reshape(4, 4)
        modality = stored.get("modality", "xray")
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: corrupt '{GEOMETRY_KEY}' geometry record") from None
    return affine, modality if modality in MODALITIES else "xray"
