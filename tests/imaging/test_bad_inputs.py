"""Paths that are not images: one-line InputErrors naming the file."""

from __future__ import annotations

import pytest

from medvae_engine.errors import InputError
from medvae_engine.imaging import read_volume


def _message(path) -> str:
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "not found" in _message(tmp_path / "nothing.nii.gz")


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.dcm", "empty.png", "empty.mha"])
def test_empty_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    assert "empty" in _message(tmp_path / name)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    assert "unknown image format '.csv'" in _message(path)


def test_extensionless_file_that_is_not_dicom(tmp_path):
    path = tmp_path / "IM0001"
    path.write_bytes(b"\0" * 200)
    assert "unknown image format" in _message(path)


@pytest.mark.parametrize("name", ["noise.dcm", "noise.mha", "noise.nrrd", "noise.png", "noise.tif"])
def test_random_bytes_with_image_suffixes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 8)
    _message(path)


def test_unknown_modality_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="modality"):
        read_volume(tmp_path / "x.nii", modality="ultrasound")
