"""MHA/MHD/NRRD through SimpleITK: LPS<->RAS, (z,y,x)<->(x,y,z), round trips, 4D frames."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_samples import dicom_file, files_in, nibabel_file

from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging import Volume, read_volume, write_volume

LPS = np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_round_trip_is_exact_and_agrees_with_simpleitk_world_coordinates(tmp_path, suffix):
    volume = read_volume(nibabel_file("anatomical.nii"), modality="mri")
    path = write_volume(volume, tmp_path / f"anat{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
    assert back.modality == "mri"
    image = sitk.ReadImage(str(path))
    for index in [(0, 0, 0), (5, 7, 3), (32, 40, 24)]:
        itk_world = np.array(image.TransformIndexToPhysicalPoint(index)) * LPS
        ours = (back.affine @ np.array([*index, 1.0]))[:3]
        np.testing.assert_allclose(ours, itk_world, atol=1e-6)
        assert back.array[index] == sitk.GetArrayViewFromImage(image)[index[::-1]]


def test_mha_and_mhd_written_by_simpleitk_from_dicom_read_like_the_dicom(tmp_path):
    """SimpleITK's own DICOM->MetaImage conversion must give our DICOM reader's geometry."""
    source = dicom_file("MR2_UNCR.dcm")  # oblique
    image = sitk.ReadImage(str(source))
    ours = read_volume(source)
    for name in ("mr.mha", "mr.mhd"):
        sitk.WriteImage(image, str(tmp_path / name))
        volume = read_volume(tmp_path / name)
        assert volume.ndim == 2
        np.testing.assert_array_equal(volume.array, ours.array)
        np.testing.assert_allclose(volume.affine[:3, [0, 1, 3]], ours.affine[:3, [0, 1, 3]],
                                   atol=1e-6)


def test_genuine_2d_nrrd_gets_an_embedded_affine(tmp_path):
    pixels = read_volume(dicom_file("MR_small.dcm")).array  # (x, y)
    image = sitk.GetImageFromArray(pixels.T.copy())  # SimpleITK wants (y, x)
    image.SetSpacing((0.5, 0.7))
    image.SetOrigin((10.0, -20.0))
    sitk.WriteImage(image, str(tmp_path / "slice.nrrd"))
    volume = read_volume(tmp_path / "slice.nrrd")
    np.testing.assert_array_equal(volume.array, pixels)
    np.testing.assert_allclose(np.diag(volume.affine), [-0.5, -0.7, 1.0, 1.0])
    np.testing.assert_allclose(volume.affine[:3, 3], [-10.0, 20.0, 0.0])


def test_2d_volume_round_trip_through_mha(tmp_path):
    volume = read_volume(dicom_file("CT_small.dcm"))
    back = read_volume(write_volume(volume, tmp_path / "ct.mha"))
    assert back.ndim == 2 and back.modality == "ct"
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)


def test_4d_mha_needs_a_frame(tmp_path):
    frames = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (t, z, y, x)
    sitk.WriteImage(sitk.GetImageFromArray(frames, isVector=False), str(tmp_path / "t.mha"))
    with pytest.raises(InputError, match="4D with 2 frames"):
        read_volume(tmp_path / "t.mha")
    volume = read_volume(tmp_path / "t.mha", frame=1)
    np.testing.assert_array_equal(volume.array, frames[1].transpose(2, 1, 0))


def test_sheared_affine_is_refused_and_nothing_is_written(tmp_path):
    affine = np.eye(4)
    affine[0, 2] = 0.5  # tilted slices
    volume = Volume(np.ones((4, 4, 4), np.float32), affine, "ct")
    with pytest.raises(OutputError, match="sheared") as info:
        write_volume(volume, tmp_path / "tilted.nrrd")
    assert str(tmp_path / "tilted.nrrd") in str(info.value)
    assert files_in(tmp_path) == []


def test_truncated_mha_is_an_input_error(tmp_path):
    path = write_volume(read_volume(nibabel_file("anatomical.nii")), tmp_path / "a.mha")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="a.mha"):
        read_volume(path)
