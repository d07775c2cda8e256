"""NIfTI reading, 4D frames, 2D images, round trips and modality stored in the header."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from imaging_samples import dicom_file, nibabel_file

from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging import Volume, read_volume, write_volume

AFFINE_TOL = 1e-4  # NIfTI-1 stores the sform in float32


def world(volume: Volume, index) -> np.ndarray:
    padded = [*index, *[0] * (3 - len(index)), 1.0]
    return (volume.affine @ np.array(padded, dtype=np.float64))[:3]


def test_read_matches_nibabel_array_order_and_affine():
    path = nibabel_file("anatomical.nii")
    img = nib.load(path)
    volume = read_volume(path)
    assert volume.shape == img.shape
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, img.get_fdata())
    np.testing.assert_array_equal(volume.affine, img.affine)
    assert volume.modality == "mri"
    assert volume.metadata["source_format"] == "nifti"


def test_4d_needs_a_frame_and_frame_selects_one_volume():
    path = nibabel_file("example4d.nii.gz")
    img = nib.load(path)
    n_frames = img.shape[3]
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert "4D" in str(info.value) and f"{n_frames} frames" in str(info.value)
    assert str(path) in str(info.value)
    volume = read_volume(path, frame=1)
    np.testing.assert_array_equal(volume.array, img.get_fdata()[..., 1])
    np.testing.assert_array_equal(volume.affine, img.affine)
    assert volume.metadata["n_frames"] == n_frames
    with pytest.raises(InputError, match="out of range"):
        read_volume(path, frame=n_frames)
    with pytest.raises(InputError, match="not 4D"):
        read_volume(nibabel_file("anatomical.nii"), frame=0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_3d_round_trip_keeps_array_affine_and_modality(tmp_path, suffix):
    volume = read_volume(nibabel_file("anatomical.nii"), modality="ct")
    volume.affine[:3, :3] = volume.affine[:3, :3] @ _rotation(0.2)  # oblique geometry
    path = write_volume(volume, tmp_path / f"out{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=AFFINE_TOL)
    np.testing.assert_allclose(world(back, (5, 7, 3)), world(volume, (5, 7, 3)), atol=AFFINE_TOL)
    assert back.modality == "ct"  # from the descrip field, although the intensities look like MRI
    assert nib.load(path).header["descrip"].item().startswith(b"medvae modality=ct")


def test_2d_round_trip_gives_back_the_same_2d_volume(tmp_path):
    volume = read_volume(dicom_file("MR2_UNCR.dcm"))  # oblique 2D slice
    volume = Volume(volume.array[::8, ::8].copy(), volume.affine @ np.diag([8, 8, 1, 1]),
                    volume.modality)
    back = read_volume(write_volume(volume, tmp_path / "slice.nii.gz"))
    assert back.ndim == 2
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=AFFINE_TOL)
    assert back.modality == "mri"


def test_integer_dtype_is_written_when_asked_and_checked(tmp_path):
    volume = read_volume(dicom_file("CT_small.dcm"))
    path = write_volume(volume, tmp_path / "ct.nii.gz", dtype="int16")
    assert nib.load(path).get_data_dtype() == np.int16
    np.testing.assert_array_equal(read_volume(path).array, volume.array)
    with pytest.raises(OutputError, match="do not fit uint8"):
        write_volume(volume, tmp_path / "ct8.nii.gz", dtype="uint8")
    assert not (tmp_path / "ct8.nii.gz").exists()


def test_modality_guess_from_intensities_for_ct_and_mri(tmp_path):
    ct = read_volume(dicom_file("CT_small.dcm"))
    nib.save(nib.Nifti1Image(ct.array.astype(np.int16), ct.affine), tmp_path / "ct.nii.gz")
    assert read_volume(tmp_path / "ct.nii.gz").modality == "ct"
    assert read_volume(tmp_path / "ct.nii.gz", modality="mri").modality == "mri"
    mri = read_volume(nibabel_file("anatomical.nii"))
    assert mri.modality == "mri"
    ringing = mri.array.copy()
    ringing.flat[:: 400] = -600.0  # a few interpolation undershoots are not air
    nib.save(nib.Nifti1Image(ringing, mri.affine), tmp_path / "mri.nii.gz")
    assert read_volume(tmp_path / "mri.nii.gz").modality == "mri"


def test_truncated_and_corrupt_nifti_are_input_errors(tmp_path):
    raw = nibabel_file("anatomical.nii").read_bytes()
    cases = {
        "cut.nii": raw[: len(raw) // 2],
        "cut.nii.gz": gzip.compress(raw)[: len(gzip.compress(raw)) // 2],
        "random.nii.gz": np.random.default_rng(0).bytes(4096),
        "header_only.nii": raw[:348],
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as info:
            read_volume(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name


def test_nan_inf_empty_and_5d_images_are_input_errors(tmp_path):
    data = read_volume(nibabel_file("anatomical.nii")).array
    data[0, 0, :2] = np.nan
    data[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="contains 3 NaN/Inf voxels"):
        read_volume(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)), tmp_path / "e.nii")
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path / "e.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2, 2), np.float32), np.eye(4)), tmp_path / "5d.nii")
    with pytest.raises(InputError, match="5D"):
        read_volume(tmp_path / "5d.nii")


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
