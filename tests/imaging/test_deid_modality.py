"""De-identification of metadata and modality resolution."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from imaging_samples import dicom_file, nibabel_file

from medvae_engine.imaging import Volume, read_volume, write_volume
from medvae_engine.imaging.deid import is_phi_key, strip_phi
from medvae_engine.imaging.modality import guess_modality, modality_from_dicom, resolve_modality

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesInstanceUID",
               "InstitutionName", "ReferringPhysicianName", "AccessionNumber")


def test_strip_phi_drops_identifiers_and_keeps_technical_fields():
    metadata = {key: "x" for key in IDENTIFYING}
    metadata.update(Modality="CT", PatientPosition="HFS", EchoTime=3.1, SOPClassUID="1.2",
                    AcquisitionTime="101010", nested={"PatientAge": "043Y", "KVP": 120})
    clean = strip_phi(metadata)
    assert clean == {"Modality": "CT", "PatientPosition": "HFS", "EchoTime": 3.1,
                     "SOPClassUID": "1.2", "nested": {"KVP": 120}}
    assert all(is_phi_key(key) for key in IDENTIFYING)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "eCT_Supplemental.dcm"])
def test_dicom_metadata_has_no_identifiers_unless_keep_phi(name):
    ds = pydicom.dcmread(dicom_file(name), stop_before_pixels=True)
    volume = read_volume(dicom_file(name))
    assert not [key for key in volume.metadata if is_phi_key(key)]
    assert str(ds.PatientName) not in json.dumps(volume.metadata)
    kept = read_volume(dicom_file(name), keep_phi=True)
    assert kept.metadata["PatientName"] == str(ds.PatientName)
    assert kept.metadata["StudyInstanceUID"] == ds.StudyInstanceUID
    for key in ("Modality", "PhotometricInterpretation", "Manufacturer"):
        if key in ds:
            assert volume.metadata[key] == str(ds[key].value)
    json.dumps(kept.metadata)


def test_dicom_with_an_unmapped_modality_code_is_other():
    assert read_volume(dicom_file("SC_rgb_small_odd.dcm")).modality == "other"  # Modality OT


def test_series_keep_phi_reports_the_series_uid(ct_series_dir):
    uid = pydicom.dcmread(next(ct_series_dir.iterdir())).SeriesInstanceUID
    assert "SeriesInstanceUID" not in read_volume(ct_series_dir).metadata
    assert read_volume(ct_series_dir, keep_phi=True).metadata["SeriesInstanceUID"] == uid


def test_modality_codes_and_priorities():
    assert [modality_from_dicom(c) for c in ("CT", "MR", "CR", "DX", "MG", "XA", "US")] == [
        "ct", "mri", "xray", "xray", "xray", "xray", "other"]
    ct = read_volume(dicom_file("CT_small.dcm")).array
    mri = read_volume(nibabel_file("anatomical.nii")).array
    assert guess_modality(ct) == "ct" and guess_modality(mri) == "mri"
    assert resolve_modality("auto", "xray", ct) == "xray"  # the file's declaration wins over HU
    assert resolve_modality("auto", "unknown", ct) == "ct"
    assert resolve_modality("auto", "other", ct) == "other"  # e.g. DICOM "US": not guessed
    assert resolve_modality("MRI", "ct", ct) == "mri"  # an explicit choice wins over everything
    assert guess_modality(np.zeros((0, 3))) == "mri"
    with pytest.raises(ValueError):
        resolve_modality("pet", "ct", ct)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd", ".tif"])
def test_stored_modality_other_survives_a_round_trip_despite_hu_values(tmp_path, suffix):
    ct = read_volume(dicom_file("CT_small.dcm"))
    back = read_volume(write_volume(Volume(ct.array, ct.affine, "other"), tmp_path / f"x{suffix}"))
    assert back.modality == "other"
    assert not [key for key in back.metadata if key.startswith("_")]
