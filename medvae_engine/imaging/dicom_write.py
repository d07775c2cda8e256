"""DICOM export: a Volume (reconstruction, SR result, map) written as a new derived DICOM series.

The series gets new Series and SOP Instance UIDs, the source's Study and Frame of Reference UIDs
with ``keep_phi`` (so a PACS files it beside the original and links positions), else the
pseudonymous UIDs the reader derived from them; the geometry of the Volume's affine (RAS converted
to DICOM's LPS: one file per slice along the third array axis); integer pixels with a rescale
slope/intercept (CT in HU); ``ImageType`` DERIVED\\SECONDARY. Patient, study and institution fields
come from the source only with ``keep_phi``; otherwise the series is de-identified. The folder
appears complete or not at all (written under a temporary name, then renamed).
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medvae_engine.errors import OutputError
from medvae_engine.imaging.atomic import first_line
from medvae_engine.imaging.dicom import LPS_TO_RAS, PSEUDONYMS_KEY
from medvae_engine.imaging.volume import Volume
from medvae_engine.version import __version__

# Patient- and study-level fields copied from the source only with keep_phi.
STUDY_PHI_KEYS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientBirthTime",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "InstitutionName", "InstitutionalDepartmentName",
)
# Technical source fields that still describe the derived images.
TECHNICAL_COPY = (
    "StudyDescription", "BodyPartExamined", "PatientPosition", "ProtocolName", "Laterality",
    "KVP", "ConvolutionKernel", "ContrastBolusAgent", "MagneticFieldStrength", "MRAcquisitionType",
    "ScanningSequence", "SequenceVariant", "SequenceName", "EchoTime", "RepetitionTime",
    "InversionTime", "FlipAngle",
)
SOP_CLASSES = {"ct": CTImageStorage, "mri": MRImageStorage}
MODALITY_CODES = {"ct": "CT", "mri": "MR", "xray": "DX", "other": "OT"}
CT_INTERCEPT = -1024.0
SERIES_NUMBER_OFFSET = 1000
_ORTHOGONAL_TOLERANCE = 1e-3
_DESCRIPTION_LENGTH = 64  # VR LO


def is_dicom_derived(volume: Volume) -> bool:
    """True when the Volume was read from a DICOM file or series (its UIDs can be reused)."""
    return str(volume.metadata.get("source_format", "")).startswith("dicom")


def dicom_source_note(volume: Volume) -> str | None:
    """What a user should know before a non-DICOM volume is exported as DICOM, else None."""
    if is_dicom_derived(volume):
        return None
    return ("the image was not read from DICOM: the series gets a new Study and Frame of "
            "Reference UID and no patient fields; a PACS shows it as a separate study")


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    description: str,
    keep_phi: bool = False,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write ``volume`` as a new DICOM series into the new folder ``folder``; returns it.

    ``description`` becomes SeriesDescription (name the model); ``window`` (lo, hi) the display
    window, by default the source's, else the 1st-99th percentile of the values.
    """
    folder = Path(folder)
    check_dicom_destination(folder)
    try:
        datasets = series_datasets(volume, description=description, keep_phi=keep_phi,
                                   window=window)
    except OutputError as exc:
        raise OutputError(f"{folder}: {exc}") from None
    tmp = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        for number, ds in enumerate(datasets, start=1):
            pydicom.dcmwrite(tmp / f"IM{number:05d}.dcm", ds, enforce_file_format=True)
        os.rename(tmp, folder)  # replaces an empty folder; nothing partial is ever visible
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            reason = exc.strerror or first_line(exc)
            raise OutputError(f"{folder}: cannot write DICOM series ({reason})") from None
        raise
    return folder


def series_datasets(
    volume: Volume,
    *,
    description: str,
    keep_phi: bool = False,
    window: tuple[float, float] | None = None,
) -> Iterator[Dataset]:
    """One DICOM dataset per slice (third array axis; a 2D image is one slice), made lazily.

    Header problems (NaN, sheared affine) raise before the first dataset is yielded.
    """
    values = np.asarray(volume.array, np.float32)
    if not np.all(np.isfinite(values)):
        raise OutputError("image holds NaN/Inf values, cannot write it as DICOM")
    stored, slope, intercept = integer_pixels(values, volume.modality)
    planes = stored[..., None] if stored.ndim == 2 else stored
    affine = LPS_TO_RAS @ volume.affine  # the same diagonal maps RAS back to LPS
    row_step, col_step, slice_step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    row_cos, col_cos = _unit(row_step), _unit(col_step)
    if abs(float(np.dot(row_cos, col_cos))) > _ORTHOGONAL_TOLERANCE:
        raise OutputError("the image's in-plane axes are not orthogonal (sheared affine); "
                          "DICOM cannot represent it")
    normal = np.cross(row_cos, col_cos)
    spacing_between = abs(float(np.dot(slice_step, normal))) or float(np.linalg.norm(slice_step))
    shared = _series_header(volume, description, keep_phi)
    shared.update(
        ImageOrientationPatient=[_ds(v) for v in np.concatenate([row_cos, col_cos])],
        PixelSpacing=[_ds(np.linalg.norm(col_step)), _ds(np.linalg.norm(row_step))],
        SliceThickness=_ds(_thickness(volume, spacing_between)),
        RescaleSlope=_ds(slope),
        RescaleIntercept=_ds(intercept),
        RescaleType="HU" if volume.modality == "ct" else "US",
        **_window(volume, values, window),
    )
    if volume.ndim == 3:
        shared["SpacingBetweenSlices"] = _ds(spacing_between)
    return _slices(planes, affine, normal, shared)


def _slices(planes: np.ndarray, affine: np.ndarray, normal: np.ndarray,
            shared: dict[str, Any]) -> Iterator[Dataset]:
    slice_step = affine[:3, 2]
    for k in range(planes.shape[2]):
        ds = Dataset()
        for key, value in shared.items():
            setattr(ds, key, value)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        position = affine[:3, 3] + k * slice_step
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(np.dot(position, normal)))
        ds.set_pixel_data(np.ascontiguousarray(planes[:, :, k].T), "MONOCHROME2", 16)
        ds.file_meta = _file_meta(ds)
        yield ds


def integer_pixels(values: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """(stored integers, slope, intercept) with ``stored * slope + intercept`` ~= ``values``.

    CT keeps integer HU (slope 1, intercept -1024 in uint16 where the range fits, else int16);
    integer-valued images keep their values; anything else spans uint16 with a computed slope.
    """
    lo, hi = float(values.min()), float(values.max())
    rounded = np.round(values)
    integral = bool(np.array_equal(rounded, values))
    if modality == "ct" and rounded.min() >= CT_INTERCEPT and rounded.max() - CT_INTERCEPT <= 65535:
        return (rounded - CT_INTERCEPT).astype(np.uint16), 1.0, CT_INTERCEPT
    if modality == "ct" or integral:
        for dtype in (np.uint16, np.int16):
            info = np.iinfo(dtype)
            if rounded.min() >= info.min and rounded.max() <= info.max:
                return rounded.astype(dtype), 1.0, 0.0
    intercept = float(format_number_as_ds(lo))
    slope = float(format_number_as_ds((hi - intercept) / 65534.0)) if hi > intercept else 1.0
    stored = np.clip(np.round((values.astype(np.float64) - intercept) / slope), 0, 65535)
    return stored.astype(np.uint16), slope, intercept


def check_dicom_destination(folder: Path) -> None:
    """A DICOM series goes into a new (or empty) folder, never mixed with other files."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is a file; a DICOM series needs a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise OutputError(f"{folder}: folder is not empty; give a new folder for the DICOM series")


def _series_header(volume: Volume, description: str, keep_phi: bool) -> dict[str, Any]:
    """Patient, study, series, equipment and image-type fields shared by every slice."""
    meta = volume.metadata
    pseudonyms = meta.get(PSEUDONYMS_KEY) or {}
    modality = str(meta.get("Modality") or MODALITY_CODES[volume.modality])
    now = datetime.datetime.now()
    header: dict[str, Any] = {
        "SOPClassUID": SOP_CLASSES.get(volume.modality, SecondaryCaptureImageStorage),
        "Modality": modality,
        "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
        "StudyDate": "", "StudyTime": "", "ReferringPhysicianName": "", "AccessionNumber": "",
        "StudyID": "",
        "StudyInstanceUID": pseudonyms.get("study") or generate_uid(),
        "FrameOfReferenceUID": pseudonyms.get("frame_of_reference") or generate_uid(),
        "PositionReferenceIndicator": "",
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": _series_number(meta.get("SeriesNumber")),
        "SeriesDescription": description[:_DESCRIPTION_LENGTH],
        "DerivationDescription": f"{description} (napari-medvae {__version__})",
        "ImageType": ["DERIVED", "SECONDARY"],
        "Manufacturer": "napari-medvae",
        "SoftwareVersions": str(__version__),
        "AcquisitionNumber": "",
        "BurnedInAnnotation": "NO",
    }
    if header["SOPClassUID"] == SecondaryCaptureImageStorage:
        header["ConversionType"] = "WSD"  # workstation
    if volume.modality == "mri":
        header.update(ScanningSequence="RM", SequenceVariant="NONE", ScanOptions="",
                      MRAcquisitionType="", EchoTime="", EchoTrainLength="")
    if volume.modality == "ct":
        header["KVP"] = ""
    header.update({k: _dicom_value(meta[k]) for k in TECHNICAL_COPY if k in meta})
    if keep_phi:
        header.update({k: meta[k] for k in STUDY_PHI_KEYS if k in meta})
        header.update({k: meta[k] for k in ("StudyInstanceUID", "FrameOfReferenceUID") if k in meta})
        header.update(InstanceCreationDate=now.strftime("%Y%m%d"),
                      InstanceCreationTime=now.strftime("%H%M%S"))
    else:
        header.update(PatientName="ANONYMOUS", PatientID="ANONYMOUS", PatientIdentityRemoved="YES",
                      DeidentificationMethod="napari-medvae: PHI removed, study UIDs replaced")
    return header


def _series_number(source: Any) -> int:
    try:
        return int(source) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        return SERIES_NUMBER_OFFSET


def _thickness(volume: Volume, spacing_between: float) -> float:
    """The source's SliceThickness while the slice spacing is the source's, else the spacing."""
    source = volume.metadata.get("SliceThickness")
    source_spacing = volume.metadata.get("slice_spacing", source)
    if source is not None and source_spacing is not None and np.isclose(
        float(source_spacing), spacing_between, rtol=1e-3
    ):
        return float(source)
    return spacing_between


def _window(volume: Volume, values: np.ndarray, window: tuple[float, float] | None) -> dict:
    """WindowCenter/Width: the given (lo, hi), else the source's, else the 1-99 percentile range."""
    if window is None:
        center, width = volume.metadata.get("WindowCenter"), volume.metadata.get("WindowWidth")
        if isinstance(center, list):
            center = center[0] if center else None
        if isinstance(width, list):
            width = width[0] if width else None
        if center is not None and width is not None:
            return {"WindowCenter": _ds(center), "WindowWidth": _ds(width)}
        window = tuple(float(v) for v in np.percentile(values, [1, 99]))
    lo, hi = window
    return {"WindowCenter": _ds((lo + hi) / 2), "WindowWidth": _ds(max(hi - lo, 1.0))}


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-9:
        raise OutputError("the image's affine has a zero-length axis; cannot write it as DICOM")
    return vector / norm


def _dicom_value(value: Any) -> Any:
    """Metadata values back to DICOM: floats as decimal strings, lists item by item."""
    if isinstance(value, list):
        return [_dicom_value(v) for v in value]
    return _ds(value) if isinstance(value, float) else value


def _ds(value: Any) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    return format_number_as_ds(float(value))
