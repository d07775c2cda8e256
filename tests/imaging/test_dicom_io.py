"""DICOM files and series: HU, geometry against SimpleITK, ordering, series selection."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from imaging_samples import copy_series, dicom_file

from medvae_engine.errors import InputError
from medvae_engine.imaging import list_series, read_volume

LPS = np.array([-1.0, -1.0, 1.0])


def assert_matches_simpleitk(volume, image: sitk.Image, n_points: int = 20) -> None:
    """Our affine and ITK's geometry put the same intensity at the same world point."""
    rng = np.random.default_rng(0)
    itk_values = sitk.GetArrayFromImage(image)  # (z, y, x)
    for _ in range(n_points):
        index = tuple(int(rng.integers(0, n)) for n in volume.shape)
        world_ras = (volume.affine @ np.array([*index, *[0] * (3 - len(index)), 1.0]))[:3]
        itk_index = image.TransformPhysicalPointToIndex(tuple(world_ras * LPS))
        np.testing.assert_allclose(
            image.TransformIndexToPhysicalPoint(itk_index), world_ras * LPS, atol=1e-3
        )
        itk_value = itk_values[tuple(reversed(itk_index))]
        assert volume.array[index] == pytest.approx(float(itk_value), rel=1e-5, abs=1e-4)


def test_ct_small_is_ct_in_hounsfield_units_with_header_geometry():
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    volume = read_volume(dicom_file("CT_small.dcm"))
    assert volume.modality == "ct"
    assert volume.shape == (ds.Columns, ds.Rows)
    assert volume.array.dtype == np.float32
    assert -1100 <= volume.array.min() <= 0 < volume.array.max()
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.array, hu.T)
    np.testing.assert_allclose(volume.affine[:3, 3], np.array(ds.ImagePositionPatient) * LPS)
    np.testing.assert_allclose(volume.spacing, [float(s) for s in ds.PixelSpacing[::-1]])
    assert volume.metadata["RescaleIntercept"] == float(ds.RescaleIntercept)
    assert volume.metadata["source_format"] == "dicom"
    assert_matches_simpleitk(volume, sitk.ReadImage(str(dicom_file("CT_small.dcm"))))


@pytest.mark.parametrize("name", ["MR2_UNCR.dcm", "693_UNCR.dcm"])
def test_oblique_and_large_files_match_simpleitk(name):
    volume = read_volume(dicom_file(name))
    assert_matches_simpleitk(volume, sitk.ReadImage(str(dicom_file(name))))


def test_xray_without_geometry_is_xray_with_monochrome1_inverted():
    path = dicom_file("RG1_UNCR.dcm")
    volume = read_volume(path)
    assert volume.modality == "xray"
    assert volume.ndim == 2
    assert volume.metadata["inverted_monochrome1"] is True
    assert volume.spacing == (1.0, 1.0)  # PixelSpacing is 0 in this file and there is no other
    assert_matches_simpleitk(volume, sitk.ReadImage(str(path)))  # GDCM inverts MONOCHROME1 too


def test_multiframe_with_functional_groups_is_3d_sorted_by_position():
    path = dicom_file("eCT_Supplemental.dcm")
    volume = read_volume(path)
    assert volume.shape == (512, 512, 2)
    assert volume.modality == "ct"
    assert volume.spacing[2] == pytest.approx(10.0)
    assert_matches_simpleitk(volume, sitk.ReadImage(str(path)))


def test_multiframe_without_positions_stacks_frames_with_header_spacing():
    volume = read_volume(dicom_file("emri_small.dcm"))
    assert volume.shape == (64, 64, 10)
    assert volume.modality == "mri"
    assert volume.spacing[2] == pytest.approx(1.2)  # SpacingBetweenSlices
    assert volume.metadata["geometry_assumed"] is True
    frames = pydicom.dcmread(dicom_file("emri_small.dcm")).pixel_array
    np.testing.assert_array_equal(volume.array[:, :, 3], frames[3].T)


@pytest.mark.parametrize("name", ["IM0001", "1.2.840.113619.2.55.3.7"])
def test_dicom_without_dcm_suffix_is_detected_by_preamble(tmp_path, name):
    path = tmp_path / name
    shutil.copyfile(dicom_file("MR_small.dcm"), path)
    volume = read_volume(path)
    assert volume.modality == "mri" and volume.shape == (64, 64)


def test_series_is_ordered_by_position_not_name_or_instance_number(ct_series_dir):
    volume = read_volume(ct_series_dir)
    slices = [pydicom.dcmread(p) for p in ct_series_dir.iterdir()]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert volume.shape == (16, 16, 5)
    assert volume.modality == "ct"
    for k, ds in enumerate(slices):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[:, :, k], hu.T)
    assert volume.spacing[2] == pytest.approx(2.5)
    assert volume.metadata["slice_spacing"] == pytest.approx(2.5)
    np.testing.assert_allclose(volume.affine[:3, 3], np.array(slices[0].ImagePositionPatient) * LPS)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_series_dir)))
    assert_matches_simpleitk(volume, reader.Execute())


def test_oblique_series_built_from_a_real_slice_sorts_along_the_normal(tmp_path):
    """Four copies of a real MR slice on a tilted plane, positions along the normal, shuffled."""
    base = pydicom.dcmread(dicom_file("MR_small.dcm")).pixel_array.copy()
    row = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    col = np.array([-np.sin(0.3) * np.cos(0.5), np.cos(0.3) * np.cos(0.5), -np.sin(0.5)])
    normal = np.cross(row, col)
    origin = np.array([-20.0, 15.0, 40.0])
    for k, name in zip([2, 0, 3, 1], ["b", "d", "a", "c"], strict=True):
        ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + 3.0 * k * normal]
        ds.InstanceNumber = 10 - k
        ds.PixelData = (base + 100 * k).astype(base.dtype).tobytes()
        ds.save_as(tmp_path / name)
    volume = read_volume(tmp_path)
    for k in range(4):
        np.testing.assert_array_equal(volume.array[:, :, k], (base + 100 * k).T)
    assert volume.spacing[2] == pytest.approx(3.0, abs=1e-4)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    assert_matches_simpleitk(volume, reader.Execute())


def test_mixed_series_error_lists_them_and_series_uid_selects(ct_series_dir):
    mr = pydicom.dcmread(dicom_file("MR_small.dcm"))
    shutil.copyfile(dicom_file("MR_small.dcm"), ct_series_dir / "extra")
    ct_uid = pydicom.dcmread(next(ct_series_dir.iterdir())).SeriesInstanceUID
    with pytest.raises(InputError) as info:
        read_volume(ct_series_dir)
    message = str(info.value)
    assert "\n" not in message and "2 DICOM series" in message
    assert f"{ct_uid} (" in message and "5 files" in message
    assert f"{mr.SeriesInstanceUID} (" in message and "1 files" in message
    assert read_volume(ct_series_dir, series_uid=ct_uid).shape == (16, 16, 5)
    assert read_volume(ct_series_dir, series_uid=mr.SeriesInstanceUID).shape == (64, 64)
    assert [s.n_files for s in list_series(ct_series_dir)] == [5, 1]
    with pytest.raises(InputError, match="no series 1.2.3"):
        read_volume(ct_series_dir, series_uid="1.2.3")


def test_series_with_a_missing_slice_is_refused(ct_series_dir):
    by_position = sorted(
        ct_series_dir.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2])
    )
    by_position[2].unlink()
    with pytest.raises(InputError, match="uneven slice spacing"):
        read_volume(ct_series_dir)


def test_series_with_slices_of_different_sizes_is_refused(ct_series_dir):
    path = next(ct_series_dir.iterdir())
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.pixel_array[:8, :8].copy().tobytes()
    ds.Rows, ds.Columns = 8, 8
    ds.save_as(path)
    with pytest.raises(InputError, match="differ in size"):
        read_volume(ct_series_dir)


def test_series_in_nested_folders_with_non_dicom_files(tmp_path):
    copy_series(tmp_path / "study" / "series1")
    (tmp_path / "study" / "README.txt").write_text("not an image")
    assert read_volume(tmp_path).shape == (16, 16, 5)


def test_folder_without_dicom_images_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    shutil.copyfile(dicom_file("rtplan.dcm"), tmp_path / "plan.dcm")
    with pytest.raises(InputError, match="no DICOM image files"):
        read_volume(tmp_path)


def test_dicom_without_pixel_data_is_an_input_error():
    with pytest.raises(InputError, match="no pixel data") as info:
        read_volume(dicom_file("rtplan.dcm"))
    assert "rtplan.dcm" in str(info.value)


def test_truncated_dicom_is_an_input_error_not_a_zero_image(tmp_path):
    data = dicom_file("CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_rgb_dicom_is_averaged_and_flagged():
    path = dicom_file("SC_rgb_small_odd.dcm")
    ds = pydicom.dcmread(path)
    volume = read_volume(path)
    assert volume.metadata["converted_from_rgb"] is True
    np.testing.assert_allclose(volume.array, ds.pixel_array.astype(np.float32).mean(-1).T)


def test_dicom_metadata_is_json_serialisable(ct_series_dir):
    for volume in (read_volume(dicom_file("eCT_Supplemental.dcm")), read_volume(ct_series_dir)):
        json.dumps(volume.metadata)
        assert volume.metadata["Modality"] == "CT"
