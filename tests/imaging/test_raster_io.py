"""PNG/JPEG/TIFF: (x, y) order, colour averaging, 16-bit, stacks, resolution, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from imaging_samples import dicom_file, files_in, nibabel_file
from PIL import Image

from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging import Volume, read_volume, write_volume


@pytest.fixture
def mr_pixels() -> np.ndarray:
    """A real 64x64 MR slice as (rows, cols) uint16 with values above 255."""
    return read_volume(dicom_file("MR_small.dcm")).array.T.astype(np.uint16)


def test_png_8bit_is_xray_transposed_with_1mm_identity(tmp_path, mr_pixels):
    pixels = (mr_pixels // 16).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    volume = read_volume(tmp_path / "a.png")
    assert volume.modality == "xray" and volume.shape == (64, 64)
    np.testing.assert_array_equal(volume.array, pixels.T)
    np.testing.assert_array_equal(volume.affine, np.eye(4))
    assert "converted_from_rgb" not in volume.metadata


def test_png_16bit_values_are_kept(tmp_path, mr_pixels):
    Image.fromarray(mr_pixels).save(tmp_path / "a16.png")
    volume = read_volume(tmp_path / "a16.png")
    assert volume.array.max() > 255
    np.testing.assert_array_equal(volume.array, mr_pixels.T)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_is_averaged_and_flagged(tmp_path, mr_pixels, mode):
    base = (mr_pixels[:40, :50] // 16).astype(np.uint8)
    channels = [base, base // 2, 255 - base] + ([np.full_like(base, 7)] if mode == "RGBA" else [])
    Image.fromarray(np.stack(channels, axis=-1), mode=mode).save(tmp_path / "c.png")
    volume = read_volume(tmp_path / "c.png")
    expected = np.stack(channels[:3], -1).astype(np.float32).mean(-1)
    np.testing.assert_allclose(volume.array, expected.T, rtol=1e-6)
    assert volume.metadata["converted_from_rgb"] is True
    assert volume.shape == (50, 40)


def test_jpeg_reads_as_xray(tmp_path, mr_pixels):
    Image.fromarray((mr_pixels // 16).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    volume = read_volume(tmp_path / "a.jpg")
    assert volume.modality == "xray" and volume.shape == (64, 64)
    assert np.abs(volume.array - (mr_pixels // 16).T).mean() < 3  # lossy


def test_png_round_trip_keeps_values_affine_and_modality(tmp_path):
    volume = read_volume(dicom_file("MR_small.dcm"))  # integer-valued, oblique-free, offset origin
    back = read_volume(write_volume(volume, tmp_path / "mr.png"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_array_equal(back.affine, volume.affine)
    assert back.modality == "mri"
    with Image.open(tmp_path / "mr.png") as img:
        assert img.mode.startswith("I")  # 16-bit, since values exceed 255


def test_png_refuses_float_and_3d_data_leaving_nothing(tmp_path):
    ct = read_volume(dicom_file("CT_small.dcm"))  # negative HU
    with pytest.raises(OutputError, match="use .tif") as info:
        write_volume(ct, tmp_path / "ct.png")
    assert str(tmp_path / "ct.png") in str(info.value)
    with pytest.raises(OutputError, match="2D"):
        write_volume(read_volume(nibabel_file("anatomical.nii")), tmp_path / "v.png")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("source", ["CT_small.dcm", "anatomical.nii", "eCT_Supplemental.dcm"])
def test_tiff_round_trip_float32_2d_and_stack(tmp_path, source):
    path = dicom_file(source) if source.endswith(".dcm") else nibabel_file(source)
    volume = read_volume(path)
    if volume.ndim == 3:
        volume = Volume(volume.array[:, :, :3] if volume.shape[2] > 3 else volume.array,
                        volume.affine, volume.modality)  # 3 slices: must not turn into RGB
    volume.array += 0.25  # not integer: TIFF keeps float32
    back = read_volume(write_volume(volume, tmp_path / "out.tif"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_array_equal(back.affine, volume.affine)
    assert back.modality == volume.modality
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.pages[0].dtype == np.float32


def test_foreign_tiff_stack_uses_resolution_tags(tmp_path, mr_pixels):
    stack = np.stack([mr_pixels, mr_pixels // 2, mr_pixels // 3])  # (pages, rows, cols)
    tifffile.imwrite(tmp_path / "s.tif", stack, resolution=(20.0, 40.0),
                     resolutionunit="CENTIMETER", photometric="minisblack")
    volume = read_volume(tmp_path / "s.tif")
    assert volume.shape == (64, 64, 3)
    np.testing.assert_array_equal(volume.array[:, :, 2], (mr_pixels // 3).T)
    np.testing.assert_allclose(volume.spacing, (0.5, 0.25, 1.0))  # 10 mm / px-per-cm


def test_rgb_tiff_is_averaged(tmp_path, mr_pixels):
    base = (mr_pixels // 16).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tiff", np.stack([base, base // 2, base // 4], -1),
                     photometric="rgb")
    volume = read_volume(tmp_path / "c.tiff")
    assert volume.ndim == 2 and volume.metadata["converted_from_rgb"] is True
    expected = np.stack([base, base // 2, base // 4], -1).astype(np.float32).mean(-1)
    np.testing.assert_allclose(volume.array, expected.T, rtol=1e-6)


def test_4d_tiff_is_refused(tmp_path):
    frames = np.arange(2 * 3 * 8 * 8, dtype=np.uint16).reshape(2, 3, 8, 8)
    tifffile.imwrite(tmp_path / "t.tif", frames, metadata={"axes": "TZYX"})
    with pytest.raises(InputError, match="4 dimensions"):
        read_volume(tmp_path / "t.tif")


def test_truncated_png_is_an_input_error(tmp_path, mr_pixels):
    Image.fromarray(mr_pixels).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="a.png"):
        read_volume(tmp_path / "a.png")


def test_jpeg_writing_is_refused(tmp_path):
    with pytest.raises(OutputError, match="cannot write '.jpg'"):
        write_volume(Volume(np.zeros((4, 4))), tmp_path / "a.jpg")
