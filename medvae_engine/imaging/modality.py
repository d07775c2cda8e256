"""Modality resolution: the user's choice, else what the file declares, else the intensities."""

from __future__ import annotations

import numpy as np

from medvae_engine.imaging.volume import MODALITIES

DICOM_MODALITIES = {
    "CT": "ct",
    "MR": "mri",
    "CR": "xray",
    "DX": "xray",
    "MG": "xray",
    "RF": "xray",
    "XA": "xray",
    "IO": "xray",
    "PX": "xray",
}
CT_LOW_HU = -500.0  # air and lung in Hounsfield units; MRI magnitudes are never this negative
MIN_LOW_SHARE = 0.01  # share of voxels at or below CT_LOW_HU before an image is called CT
MAX_CT_VALUE = 40000.0
# Readers set this metadata key when the file itself states the modality; read_volume removes it.
DECLARED_KEY = "_modality_declared"


def check_modality(requested: str) -> str:
    """Validate a requested modality (``auto`` or one of MODALITIES); return it in lower case."""
    value = str(requested).lower()
    if value != "auto" and value not in MODALITIES:
        raise ValueError(f"modality must be 'auto' or one of {MODALITIES}, got {requested!r}")
    return value


def modality_from_dicom(code: str | None) -> str:
    """Map a DICOM Modality code (CT, MR, CR, DX...) to ct/mri/xray, or ``other``."""
    return DICOM_MODALITIES.get(str(code or "").strip().upper(), "other")


def guess_modality(array: np.ndarray) -> str:
    """``ct`` when intensities look like Hounsfield units (air or lung present), else ``mri``."""
    values = np.asarray(array)
    if values.size == 0 or float(values.min()) > CT_LOW_HU or float(values.max()) > MAX_CT_VALUE:
        return "mri"
    share = np.count_nonzero(values <= CT_LOW_HU) / values.size
    return "ct" if share >= MIN_LOW_SHARE else "mri"


def resolve_modality(requested: str, declared: str, array: np.ndarray) -> str:
    """Explicit request > modality declared by the file > guess from the intensities.

    ``declared`` is one of MODALITIES when the file says what it is (a DICOM code we do not map
    declares ``other``), or ``unknown`` when it says nothing.
    """
    requested = check_modality(requested)
    if requested != "auto":
        return requested
    if declared in MODALITIES:
        return declared
    return guess_modality(array)
