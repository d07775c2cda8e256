"""De-identification of metadata: which header fields identify a patient and how to drop them.

Readers only copy a whitelist of technical DICOM fields into `Volume.metadata`; `strip_phi` is the
second line of defence applied to every metadata dict unless the user asked to keep identifiers.
"""

from __future__ import annotations

from typing import Any

PHI_KEYS = frozenset(
    {
        "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
        "PatientBirthTime", "PatientSex", "PatientAge", "PatientSize", "PatientWeight",
        "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "EthnicGroup",
        "PatientComments", "AdditionalPatientHistory", "MedicalRecordLocator",
        "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
        "InstitutionalDepartmentName", "ReferringPhysicianName", "ReferringPhysicianAddress",
        "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
        "RequestingPhysician", "OperatorsName", "StationName", "DeviceSerialNumber",
        "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
        "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime",
        "AcquisitionDateTime", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
        "FrameOfReferenceUID", "MediaStorageSOPInstanceUID", "IrradiationEventUID",
        "RequestAttributesSequence", "ImageComments", "StudyComments",
    }
)

# Substrings that mark a field as identifying even when it is not listed above.
_PHI_MARKERS = ("Patient", "Physician", "Operator", "Institution", "Address", "Telephone",
                "Accession", "Date", "UID", "Birth")
# Technical fields that contain a marker but identify nobody.
_NOT_PHI = frozenset({"PatientPosition", "PatientOrientation", "SOPClassUID",
                      "TransferSyntaxUID"})


def is_phi_key(key: str) -> bool:
    """True when a metadata key names a patient-, person-, place- or time-identifying field."""
    if key in _NOT_PHI:
        return False
    return key in PHI_KEYS or any(marker in key for marker in _PHI_MARKERS)


def strip_phi(metadata: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``metadata`` without identifying fields (nested dicts are filtered too)."""
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if is_phi_key(key):
            continue
        clean[key] = strip_phi(value) if isinstance(value, dict) else value
    return clean
