"""DICOM reading: single files (2D or multi-frame) and series folders, with geometry and HU.

Array order, for files and series alike: ``array[i, j, k]`` with i = column, j = row, k = slice (as
NIfTI and ITK index images), so the affine's first column is the row direction cosine (from
ImageOrientationPatient) times the column spacing, the second the column cosine times the row
spacing, and the third the step between slice positions; all converted from DICOM's LPS to RAS.
Slices are ordered by their position along the slice normal, never by file name or InstanceNumber.
A 2D image without position/orientation (typical X-ray) gets DICOM's default orientation (rows along
+L, columns along +P) and PixelSpacing, else ImagerPixelSpacing, else 1 mm.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medvae_engine.errors import InputError
from medvae_engine.imaging.atomic import first_line
from medvae_engine.imaging.deid import PHI_KEYS, strip_phi
from medvae_engine.imaging.modality import DECLARED_KEY, modality_from_dicom
from medvae_engine.imaging.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TECHNICAL_KEYS = (
    "Modality", "SOPClassUID", "ImageType", "Manufacturer", "ManufacturerModelName",
    "SeriesDescription", "StudyDescription", "ProtocolName", "BodyPartExamined", "SeriesNumber",
    "PatientPosition", "ViewPosition", "Laterality", "ImageLaterality",
    "PhotometricInterpretation", "SamplesPerPixel", "Rows", "Columns", "NumberOfFrames",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PixelSpacing", "ImagerPixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "ImageOrientationPatient", "ImagePositionPatient",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
    "KVP", "XRayTubeCurrent", "Exposure", "ConvolutionKernel", "ContrastBolusAgent",
    "MagneticFieldStrength", "MRAcquisitionType", "ScanningSequence", "SequenceVariant",
    "SequenceName", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "EchoNumbers",
    "PixelPaddingValue",
)
# Without keep_phi the study and frame-of-reference UIDs are replaced by UIDs derived from them
# (one-way hash): a DICOM export lands every series of one source study in one de-identified study.
PSEUDONYMS_KEY = "dicom_pseudonyms"
PSEUDONYMISED_UIDS = {"study": "StudyInstanceUID", "frame_of_reference": "FrameOfReferenceUID"}
_STEP_TOLERANCE = (0.02, 0.01)  # relative and absolute (mm) deviation allowed between slice steps
_MAX_LISTED_SERIES = 10


@dataclasses.dataclass
class Slice:
    """One decoded 2D plane with the geometry needed to place it in a volume."""

    pixels: np.ndarray  # (rows, cols) float32, rescaled
    position: np.ndarray | None  # ImagePositionPatient (LPS mm)
    row_cosine: np.ndarray  # direction of increasing column index (LPS)
    col_cosine: np.ndarray  # direction of increasing row index (LPS)
    spacing: tuple[float, float]  # (between columns, between rows) in mm


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """A DICOM series found in a folder: what the user needs to choose one."""

    uid: str
    description: str
    modality: str
    n_files: int


def is_dicom_file(path: str | Path) -> bool:
    """True when the file carries the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom(
    path: str | Path, *, series_uid: str | None = None, keep_phi: bool = False
) -> Volume:
    """Read a DICOM file, or the series in a folder, into a float32 Volume in RAS geometry."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, keep_phi=keep_phi)
    return read_dicom_file(path, keep_phi=keep_phi)


def read_dicom_file(path: str | Path, *, keep_phi: bool = False) -> Volume:
    """Read one DICOM file: 2D for a single frame, 3D for a multi-frame image."""
    path = Path(path)
    ds = _read_dataset(path)
    slices = _slices_of_file(ds, path)
    if len(slices) == 1:
        array, affine = _plane_geometry(slices[0], _slice_thickness(ds))
        extra: dict[str, Any] = {}
    else:
        array, affine, extra = _stack(slices, path, fallback_step=_slice_thickness(ds))
    metadata = {
        "source_path": str(path.resolve()),
        "source_format": "dicom",
        **_header_metadata(ds, keep_phi),
        **_pixel_notes(ds),
        **extra,
        DECLARED_KEY: bool(ds.get("Modality")),
    }
    return Volume(array, affine, modality_from_dicom(ds.get("Modality")), metadata)


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """The image series in ``folder`` (searched recursively), largest first."""
    groups = _scan_folder(Path(folder))
    return [_series_info(uid, datasets) for uid, datasets in _largest_first(groups)]


def read_dicom_series(
    folder: str | Path, *, series_uid: str | None = None, keep_phi: bool = False
) -> Volume:
    """Read the DICOM series in ``folder`` (or the one ``series_uid`` selects) into a 3D Volume."""
    folder = Path(folder)
    groups = _scan_folder(folder)
    if not groups:
        raise InputError(f"{folder}: no DICOM image files in this folder")
    if series_uid is None and len(groups) > 1:
        raise InputError(
            f"{folder}: holds {len(groups)} DICOM series, choose one with series_uid: "
            + _describe_series(groups)
        )
    uid = series_uid if series_uid is not None else next(iter(groups))
    if uid not in groups:
        raise InputError(f"{folder}: no series {uid}; available: {_describe_series(groups)}")
    datasets = groups[uid]
    if len(datasets) == 1:
        return read_dicom_file(datasets[0].filename, keep_phi=keep_phi)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(f"{folder}: series {uid} mixes multi-frame files; open one file instead")
    slices = []
    for ds in datasets:
        file_slices = _slices_of_file(ds, Path(ds.filename))
        if file_slices[0].position is None:
            raise InputError(
                f"{ds.filename}: no ImagePositionPatient, cannot place it in series {uid}"
            )
        slices.extend(file_slices)
    array, affine, extra = _stack(slices, folder, fallback_step=None)
    first = datasets[int(np.argmin(_distances(slices)))]
    metadata = {
        "source_path": str(folder.resolve()),
        "source_format": "dicom-series",
        **_header_metadata(first, keep_phi),
        **_pixel_notes(first),
        **extra,
        "n_files": len(datasets),
        DECLARED_KEY: bool(first.get("Modality")),
    }
    if keep_phi:
        metadata["SeriesInstanceUID"] = uid
    metadata.pop("ImagePositionPatient", None)
    return Volume(array, affine, modality_from_dicom(first.get("Modality")), metadata)


# -- files ---------------------------------------------------------------------------------------


def _read_dataset(path: Path) -> Dataset:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        try:  # files without the 128-byte preamble
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise InputError(f"{path}: not a readable DICOM file ({first_line(exc)})") from None
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM file ({first_line(exc)})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"{path}: DICOM file has no pixel data (not an image, or truncated)")
    return ds


def _decode_frames(ds: Dataset, path: Path) -> np.ndarray:
    """Stored values as (frames, rows, cols) float32, colour averaged, MONOCHROME1 inverted."""
    _check_pixel_data_length(ds, path)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise InputError(
            f"{path}: cannot decode pixel data ({name}; compressed DICOM may need pylibjpeg "
            f"or python-gdcm): {first_line(exc)}"
        ) from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = np.asarray(pixels)
    if samples > 1:
        pixels = pixels[..., :3].astype(np.float32).mean(axis=-1)
    pixels = pixels.astype(np.float32).reshape(frames, pixels.shape[-2], pixels.shape[-1])
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        lo, hi = _stored_range(ds)
        pixels = (lo + hi) - pixels
    return pixels


def _check_pixel_data_length(ds: Dataset, path: Path) -> None:
    """Refuse uncompressed pixel data shorter than the header promises: never zero-fill."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or (syntax is not None and syntax.is_compressed):
        return
    bits = int(ds.get("BitsAllocated", 16) or 16)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # chroma subsampled: two values per pixel on average
    count = (
        int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
        * int(ds.get("NumberOfFrames", 1) or 1) * samples
    )
    expected = (count * bits + 7) // 8
    actual = len(ds.PixelData)
    if count == 0:
        raise InputError(f"{path}: DICOM image has no rows or columns")
    if actual < expected:
        raise InputError(
            f"{path}: pixel data truncated ({actual} of {expected} bytes), file is corrupt"
        )


def _stored_range(ds: Dataset) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _slices_of_file(ds: Dataset, path: Path) -> list[Slice]:
    frames = _decode_frames(ds, path)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    slices = []
    for index, pixels in enumerate(frames):
        sources = []
        if per_frame is not None and index < len(per_frame):
            sources.append(per_frame[index])
        if shared:
            sources.append(shared[0])
        sources.append(ds)
        slope = float(_lookup(sources, "PixelValueTransformationSequence", "RescaleSlope", 1.0))
        intercept = float(
            _lookup(sources, "PixelValueTransformationSequence", "RescaleIntercept", 0.0)
        )
        orientation = _lookup(sources, "PlaneOrientationSequence", "ImageOrientationPatient", None)
        position = _lookup(sources, "PlanePositionSequence", "ImagePositionPatient", None)
        if orientation is None or len(orientation) != 6:
            orientation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        slices.append(
            Slice(
                pixels=(pixels.astype(np.float64) * slope + intercept).astype(np.float32),
                position=None if position is None else np.asarray(position, dtype=np.float64),
                row_cosine=_unit(np.asarray(orientation[:3], dtype=np.float64), path),
                col_cosine=_unit(np.asarray(orientation[3:], dtype=np.float64), path),
                spacing=_pixel_spacing(sources),
            )
        )
    return slices


def _lookup(sources: list[Dataset], sequence: str, keyword: str, default: Any) -> Any:
    """A value from a functional-group macro (per-frame, then shared) or the top-level dataset."""
    for source in sources:
        seq = source.get(sequence)
        if seq:
            value = seq[0].get(keyword)
            if value is not None and value != "":
                return value
        value = source.get(keyword)
        if value is not None and value != "":
            return value
    return default


def _pixel_spacing(sources: list[Dataset]) -> tuple[float, float]:
    """(column spacing, row spacing) in mm from PixelSpacing, ImagerPixelSpacing, else 1 mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _lookup(sources, "PixelMeasuresSequence", keyword, None)
        if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
            return float(value[1]), float(value[0])
    return 1.0, 1.0


def _slice_thickness(ds: Dataset) -> float:
    sources = [ds]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        sources.insert(0, shared[0])
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _lookup(sources, "PixelMeasuresSequence", keyword, None)
        if value is not None and float(value) > 0:
            return float(value)
    return 1.0


def _unit(vector: np.ndarray, path: Path) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-6:
        raise InputError(f"{path}: invalid ImageOrientationPatient {vector.tolist()}")
    return vector / norm


# -- geometry ------------------------------------------------------------------------------------


def _plane_geometry(plane: Slice, thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """A single plane as a 2D (cols, rows) array with its RAS affine."""
    normal = np.cross(plane.row_cosine, plane.col_cosine)
    origin = plane.position if plane.position is not None else np.zeros(3)
    affine = _lps_affine(plane, normal * thickness, origin)
    return np.ascontiguousarray(plane.pixels.T), affine


def _lps_affine(plane: Slice, step: np.ndarray, origin: np.ndarray) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 0] = plane.row_cosine * plane.spacing[0]
    affine[:3, 1] = plane.col_cosine * plane.spacing[1]
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return LPS_TO_RAS @ affine


def _distances(slices: list[Slice]) -> np.ndarray:
    normal = np.cross(slices[0].row_cosine, slices[0].col_cosine)
    return np.array([float(np.dot(s.position, normal)) for s in slices])


def _stack(
    slices: list[Slice], source: Path, *, fallback_step: float | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Sort planes along their normal, check they agree, and build a (cols, rows, slices) volume."""
    first = slices[0]
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape:
            raise InputError(
                f"{source}: slices differ in size ({first.pixels.shape} vs {s.pixels.shape})"
            )
        if not (
            np.allclose(s.row_cosine, first.row_cosine, atol=1e-3)
            and np.allclose(s.col_cosine, first.col_cosine, atol=1e-3)
        ):
            raise InputError(f"{source}: slices have different orientations")
        if not np.allclose(s.spacing, first.spacing, rtol=1e-3):
            raise InputError(f"{source}: slices have different pixel spacings")
    extra: dict[str, Any] = {"n_slices": len(slices)}
    if any(s.position is None for s in slices):
        if fallback_step is None:
            raise InputError(f"{source}: slices lack ImagePositionPatient, cannot order them")
        normal = np.cross(first.row_cosine, first.col_cosine)
        affine = _lps_affine(first, normal * fallback_step, np.zeros(3))
        extra.update(slice_spacing=fallback_step, geometry_assumed=True)
        ordered = slices
    else:
        order = np.argsort(_distances(slices), kind="stable")
        ordered = [slices[i] for i in order]
        positions = np.stack([s.position for s in ordered])
        steps = np.diff(positions, axis=0)
        step = (positions[-1] - positions[0]) / (len(ordered) - 1)
        size = float(np.linalg.norm(step))
        deviation = float(np.max(np.linalg.norm(steps - step, axis=1)))
        if size < 1e-6:
            raise InputError(f"{source}: all {len(ordered)} slices share one position")
        if deviation > _STEP_TOLERANCE[0] * size + _STEP_TOLERANCE[1]:
            gaps = np.linalg.norm(steps, axis=1)
            raise InputError(
                f"{source}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm): "
                "missing or duplicate slices?"
            )
        affine = _lps_affine(first, step, positions[0])
        extra["slice_spacing"] = size
    array = np.stack([s.pixels.T for s in ordered], axis=-1)
    return np.ascontiguousarray(array, dtype=np.float32), affine, extra


# -- folders -------------------------------------------------------------------------------------


def _scan_folder(folder: Path) -> dict[str, list[Dataset]]:
    """Image datasets under ``folder`` grouped by SeriesInstanceUID (pixel data read lazily)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    groups: dict[str, list[Dataset]] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            ds = _read_header(Path(root) / name)
            if ds is not None:
                groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    return groups


def _read_header(path: Path) -> Dataset | None:
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except Exception:
        return None  # not DICOM: README files, thumbnails...
    return ds if "PixelData" in ds and "Rows" in ds else None


def _largest_first(groups: dict[str, list[Dataset]]) -> list[tuple[str, list[Dataset]]]:
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _series_info(uid: str, datasets: list[Dataset]) -> SeriesInfo:
    first = datasets[0]
    return SeriesInfo(
        uid=uid,
        description=str(first.get("SeriesDescription", "") or ""),
        modality=str(first.get("Modality", "") or ""),
        n_files=len(datasets),
    )


def _describe_series(groups: dict[str, list[Dataset]]) -> str:
    items = [_series_info(uid, ds) for uid, ds in _largest_first(groups)]
    parts = [
        f"{i.uid or '(no UID)'} ({i.description or 'no description'}, {i.modality or '?'}, "
        f"{i.n_files} files)"
        for i in items[:_MAX_LISTED_SERIES]
    ]
    if len(items) > _MAX_LISTED_SERIES:
        parts.append(f"and {len(items) - _MAX_LISTED_SERIES} more")
    return "; ".join(parts)


# -- metadata ------------------------------------------------------------------------------------


def _header_metadata(ds: Dataset, keep_phi: bool) -> dict[str, Any]:
    """Technical header values as JSON-ready data; identifying fields only with ``keep_phi``."""
    keys = TECHNICAL_KEYS + (tuple(sorted(PHI_KEYS)) if keep_phi else ())
    metadata: dict[str, Any] = {}
    for key in keys:
        value = _json_value(ds.get(key)) if key in ds else None
        if value is not None and value != "" and value != []:
            metadata[key] = value
    if keep_phi:
        return metadata
    pseudonyms = {
        name: generate_uid(entropy_srcs=[str(ds.get(key))])
        for name, key in PSEUDONYMISED_UIDS.items()
        if ds.get(key)
    }
    return {**strip_phi(metadata), **({PSEUDONYMS_KEY: pseudonyms} if pseudonyms else {})}


def _pixel_notes(ds: Dataset) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        notes["converted_from_rgb"] = True
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        notes["inverted_monochrome1"] = True
    return notes


def _json_value(value: Any) -> Any:
    """pydicom values (DS, IS, MultiValue, PersonName, UID) as plain str/float/int/lists."""
    if value is None or isinstance(value, (bytes, bytearray, Dataset)):
        return None
    if isinstance(value, pydicom.sequence.Sequence):
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        items = [_json_value(v) for v in value]
        return [v for v in items if v is not None]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if np.isfinite(value) else None
    return str(value)
