"""DICOM export of real series: read back with pydicom and SimpleITK against the source's own
geometry and values, new UIDs in the source's study, PHI only with keep_phi, atomic folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from imaging_samples import dicom_file, files_in, nibabel_file

from medvae_engine.errors import OutputError
from medvae_engine.imaging import read_volume
from medvae_engine.imaging.dicom_write import dicom_source_note, write_dicom_series
from medvae_engine.imaging.volume import Volume

PHI_VALUES = ("Doe^Peter", "98890234")  # PatientName and PatientID of pydicom's CT5N series


def sorted_files(folder: Path) -> list[pydicom.Dataset]:
    """The files of a series ordered along the slice normal, read with pydicom only."""
    datasets = [pydicom.dcmread(p) for p in sorted(Path(folder).iterdir())]
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))


def hu(ds: pydicom.Dataset) -> np.ndarray:
    """Stored pixels through RescaleSlope/Intercept, (rows, cols), computed here with pydicom."""
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def itk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_itk_geometry(written: sitk.Image, source: sitk.Image) -> None:
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-5)


@pytest.fixture
def ct_transformed(ct_series_dir):
    """The real CT series and a reconstruction-like float copy (fractional HU, some < -1000)."""
    source = read_volume(ct_series_dir, keep_phi=True)
    values = source.array * 0.9 - 12.3 + np.linspace(0, 0.7, source.array.size).reshape(
        source.shape)
    return source, source.with_array(values.astype(np.float32))


def test_ct_series_round_trip_keeps_geometry_hu_and_study(tmp_path, ct_series_dir, ct_transformed):
    source, derived = ct_transformed
    out = write_dicom_series(derived, tmp_path / "recon", description="MedVAE reconstruction x",
                             keep_phi=True)
    written, originals = sorted_files(out), sorted_files(ct_series_dir)
    assert len(written) == len(originals) == 5
    for k, (ds, orig) in enumerate(zip(written, originals, strict=True)):
        np.testing.assert_allclose(ds.ImagePositionPatient, orig.ImagePositionPatient, atol=1e-4)
        np.testing.assert_allclose(ds.ImageOrientationPatient, orig.ImageOrientationPatient,
                                   atol=1e-6)
        np.testing.assert_allclose(ds.PixelSpacing, orig.PixelSpacing, rtol=1e-6)
        assert float(ds.SliceThickness) == pytest.approx(float(orig.SliceThickness))
        # HU within the integer quantisation of slope 1 / intercept -1024
        np.testing.assert_allclose(hu(ds), derived.array[:, :, k].T, atol=0.5 + 1e-4)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert ds.RescaleType == "HU" and ds.Modality == "CT" and ds.pixel_array.dtype == np.uint16
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "MedVAE reconstruction x"
        assert ds.StudyInstanceUID == orig.StudyInstanceUID
        assert ds.FrameOfReferenceUID == orig.FrameOfReferenceUID
        assert ds.SeriesInstanceUID != orig.SeriesInstanceUID
        assert ds.SeriesNumber != orig.SeriesNumber
        assert (str(ds.PatientName), ds.PatientID) == PHI_VALUES  # keep_phi
    uids = {ds.SOPInstanceUID for ds in written}
    assert len(uids) == 5 and not uids & {ds.SOPInstanceUID for ds in originals}
    assert len({ds.SeriesInstanceUID for ds in written}) == 1
    image, reference = itk_series(out), itk_series(ct_series_dir)
    assert_same_itk_geometry(image, reference)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image).transpose(2, 1, 0), derived.array,
                               atol=0.5 + 1e-4)


def test_without_keep_phi_no_patient_field_and_pseudonymous_study(tmp_path, ct_series_dir):
    volume = read_volume(ct_series_dir)  # default: de-identified metadata
    first = write_dicom_series(volume, tmp_path / "a", description="MedVAE reconstruction x")
    second = write_dicom_series(volume, tmp_path / "b", description="MedVAE SR x")
    source = sorted_files(ct_series_dir)[0]
    a, b = sorted_files(first)[0], sorted_files(second)[0]
    assert str(a.PatientName) == "ANONYMOUS" and a.PatientID == "ANONYMOUS"
    assert a.PatientIdentityRemoved == "YES"
    for path in [*first.iterdir(), *second.iterdir()]:
        raw = path.read_bytes()
        for secret in (*PHI_VALUES, "Doe", source.StudyInstanceUID, source.FrameOfReferenceUID,
                       source.SeriesInstanceUID):
            assert secret.encode() not in raw, (path, secret)
    # one pseudonymous study and frame of reference for every export of one source study
    assert a.StudyInstanceUID == b.StudyInstanceUID != source.StudyInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID != source.FrameOfReferenceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert_same_itk_geometry(itk_series(first), itk_series(ct_series_dir))
    np.testing.assert_array_equal(read_volume(first).array, volume.array)  # integer HU: exact


def test_oblique_mr_series_with_computed_slope(tmp_path):
    """A real MR slice on a tilted plane (four positions), smoothed to non-integer values."""
    base = pydicom.dcmread(dicom_file("MR_small.dcm")).pixel_array.astype(np.float64)
    row = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    col = np.array([-np.sin(0.3) * np.cos(0.5), np.cos(0.3) * np.cos(0.5), -np.sin(0.5)])
    normal = np.cross(row, col)
    source_dir = tmp_path / "mr"
    source_dir.mkdir()
    for k in range(4):
        ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array([-20.0, 15.0, 40.0])
                                   + 3.0 * k * normal]
        ds.PixelData = (base + 100 * k).astype(np.int16).tobytes()
        ds.save_as(source_dir / f"s{k}")
    volume = read_volume(source_dir)
    derived = volume.with_array(np.sqrt(volume.array - volume.array.min() + 1.0) * 3.1)
    out = write_dicom_series(derived, tmp_path / "out", description="MedVAE map")
    written = sorted_files(out)
    slope = float(written[0].RescaleSlope)
    assert 0 < slope < 1 and written[0].Modality == "MR" and written[0].RescaleType == "US"
    for k, ds in enumerate(written):
        np.testing.assert_allclose(hu(ds), derived.array[:, :, k].T, atol=slope / 2 + 1e-6)
    image = itk_series(out)
    assert_same_itk_geometry(image, itk_series(source_dir))
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3))[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(read_volume(out).affine, volume.affine, atol=1e-4)


def test_single_ct_file_and_out_of_range_ct_use_a_computed_slope(tmp_path):
    source = read_volume(dicom_file("CT_small.dcm"))
    assert source.ndim == 2
    out = write_dicom_series(source, tmp_path / "ct", description="MedVAE reconstruction x")
    (ds,) = sorted_files(out)
    orig = pydicom.dcmread(dicom_file("CT_small.dcm"))
    np.testing.assert_allclose(ds.ImagePositionPatient, orig.ImagePositionPatient, atol=1e-4)
    np.testing.assert_allclose(ds.PixelSpacing, orig.PixelSpacing)
    np.testing.assert_array_equal(hu(ds), hu(orig))
    back = read_volume(out)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    below = source.with_array(source.array - 1500.0)  # below -1024 HU: signed, still slope 1
    (ds,) = sorted_files(write_dicom_series(below, tmp_path / "below", description="MedVAE x"))
    assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleSlope) == 1.0
    np.testing.assert_array_equal(hu(ds), below.array.T)
    wide = source.with_array(source.array * 40.0 - 3000.5)  # beyond uint16 after -1024
    out = write_dicom_series(wide, tmp_path / "wide", description="MedVAE x")
    (ds,) = sorted_files(out)
    slope = float(ds.RescaleSlope)
    assert slope > 1 and ds.RescaleType == "HU"
    np.testing.assert_allclose(hu(ds), wide.array.T, atol=slope / 2 + 1e-3)


def test_non_dicom_volume_gets_a_new_study_and_a_note(tmp_path):
    volume = read_volume(nibabel_file("anatomical.nii"))
    note = dicom_source_note(volume)
    assert note and "not read from DICOM" in note
    assert dicom_source_note(read_volume(dicom_file("CT_small.dcm"))) is None
    out = write_dicom_series(volume, tmp_path / "anat", description="MedVAE x")
    datasets = sorted_files(out)
    assert len(datasets) == volume.shape[2]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    # a left-handed NIfTI (x flipped): DICOM readers stack slices along the plane normal, so the
    # series comes back with the slice axis reversed, every voxel at the same world position
    assert np.linalg.det(volume.affine[:3, :3]) < 0
    flipped = volume.affine.copy()
    flipped[:3, 2] = -volume.affine[:3, 2]
    flipped[:3, 3] = volume.affine[:3, :3] @ [0, 0, volume.shape[2] - 1] + volume.affine[:3, 3]
    back = read_volume(out)
    np.testing.assert_allclose(back.affine, flipped, atol=1e-4)
    integral = np.array_equal(np.round(volume.array), volume.array)
    step = 0 if integral else float(datasets[0].RescaleSlope)
    np.testing.assert_allclose(back.array, volume.array[:, :, ::-1], atol=step / 2 + 1e-4)


def test_existing_folder_is_refused_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch,
                                                                      ct_series_dir):
    volume = read_volume(ct_series_dir)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        write_dicom_series(volume, busy, description="x")
    assert files_in(busy) == ["keep.txt"]
    calls = []

    def failing(path, ds, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        original(path, ds, **kwargs)

    original = pydicom.dcmwrite
    monkeypatch.setattr(pydicom, "dcmwrite", failing)
    with pytest.raises(OutputError, match="No space left"):
        write_dicom_series(volume, tmp_path / "new", description="x")
    assert files_in(tmp_path) == ["busy", "ct_series"]


def test_sheared_or_non_finite_volume_is_refused(tmp_path):
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(OutputError, match=r"/s: .*orthogonal"):
        write_dicom_series(Volume(np.zeros((4, 4, 2)), affine), tmp_path / "s", description="x")
    with pytest.raises(OutputError, match="NaN"):
        write_dicom_series(Volume(np.full((4, 4), np.nan)), tmp_path / "n", description="x")
    assert files_in(tmp_path) == []
