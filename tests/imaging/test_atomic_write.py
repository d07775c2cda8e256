"""Atomic writes: temporary names keep the suffix, failures leave nothing, errors name the path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from imaging_samples import dicom_file, files_in

from medvae_engine.errors import OutputError
from medvae_engine.imaging import atomic_write, atomic_write_text, read_volume, write_volume
from medvae_engine.imaging.atomic import full_suffix


def test_temporary_name_keeps_the_final_suffix_and_is_replaced(tmp_path):
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), tmp)

    result = atomic_write(tmp_path / "scan.nii.gz", write)
    assert result == tmp_path / "scan.nii.gz"
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".scan.tmp-")
    assert seen[0].name.endswith(".nii.gz")
    assert nib.load(result).shape == (2, 2, 2)  # nibabel saw .gz and compressed it
    assert files_in(tmp_path) == ["scan.nii.gz"]


def test_failure_leaves_nothing_and_keeps_an_existing_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def half_write(tmp: Path) -> None:
        tmp.write_text("partial")
        raise RuntimeError("disk exploded")

    with pytest.raises(RuntimeError, match="disk exploded"):
        atomic_write(target, half_write)
    assert target.read_text() == "old"
    assert files_in(tmp_path) == ["out.json"]


def test_unwritable_folder_is_an_output_error_naming_the_path(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    target = blocker / "out.nii.gz"
    volume = read_volume(dicom_file("CT_small.dcm"))
    with pytest.raises(OutputError) as info:
        write_volume(volume, target)
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    assert files_in(tmp_path) == ["not_a_folder"]


def test_writer_error_inside_write_volume_leaves_nothing(tmp_path, monkeypatch):
    from medvae_engine.imaging import io

    def broken(volume, path):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(io.WRITERS, ".nii.gz", broken)
    with pytest.raises(OutputError, match="No space left") as info:
        write_volume(read_volume(dicom_file("CT_small.dcm")), tmp_path / "ct.nii.gz")
    assert str(tmp_path / "ct.nii.gz") in str(info.value)
    assert files_in(tmp_path) == []


def test_text_writes_and_missing_parents_are_created(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b" / "meta.json", '{"x": 1}')
    assert path.read_text() == '{"x": 1}'


def test_full_suffix():
    assert full_suffix("a/b.Nii.GZ") == ".nii.gz"
    assert full_suffix("sub-01.ses-2.nii.gz") == ".nii.gz"
    assert full_suffix("x.mha") == ".mha"
    assert full_suffix("IM0001") == ""
