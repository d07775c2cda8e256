"""`medvae reconstruct/decode -o folder --format dicom` on a real CT series: a derived series in the
source's study and geometry (read back with pydicom and SimpleITK), PHI only with --keep-phi."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from medvae_engine.cli import main
from medvae_engine.imaging.io import read_volume

CT_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _itk(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_reconstruct_to_dicom_series_in_the_source_study(tmp_path, capsys, tiny_2d_path):
    series = tmp_path / "series"
    shutil.copytree(CT_SERIES, series)
    nifti, dicom_out = tmp_path / "recon.nii.gz", tmp_path / "recon_dicom"
    assert _cli(capsys, "reconstruct", series, "-m", tiny_2d_path, "-o", nifti)[0] == 0
    code, stdout, err = _cli(capsys, "reconstruct", series, "-m", tiny_2d_path, "-o", dicom_out,
                             "--format", "dicom", "--keep-phi")
    assert code == 0, err
    assert "note:" not in err  # derived from DICOM: nothing to warn about
    recon = read_volume(nifti)  # the same deterministic reconstruction, as float32 NIfTI
    source = pydicom.dcmread(next(series.iterdir()))
    files = [pydicom.dcmread(p) for p in sorted(dicom_out.iterdir())]
    assert len(files) == 5
    for ds in files:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "MedVAE reconstruction tiny2d"
        assert str(ds.PatientName) == str(source.PatientName)
    image, reference = _itk(dicom_out), _itk(series)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    values = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    np.testing.assert_allclose(values, recon.array, atol=0.5 + 1e-3)  # integer HU


def test_decode_to_dicom_is_de_identified_without_keep_phi(tmp_path, capsys, tiny_2d_path):
    latent, out = tmp_path / "z.latent.nii.gz", tmp_path / "decoded"
    assert _cli(capsys, "encode", CT_SERIES, "-m", tiny_2d_path, "-o", latent)[0] == 0
    code, _, err = _cli(capsys, "decode", latent, "-o", out, "--format", "dicom")
    assert code == 0, err
    source = pydicom.dcmread(next(CT_SERIES.iterdir()))
    for path in out.iterdir():
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == "ANONYMOUS" and ds.StudyInstanceUID != source.StudyInstanceUID
        assert b"Doe^Peter" not in path.read_bytes()
    np.testing.assert_allclose(read_volume(out).affine, read_volume(CT_SERIES).affine, atol=1e-4)


def test_non_dicom_input_says_so_and_bad_dicom_targets_exit_2(tmp_path, capsys):
    anatomical = Path(data_path) / "anatomical.nii"
    code, _, err = _cli(capsys, "reconstruct", anatomical, "-m", "bicubic", "-o",
                        tmp_path / "a", "--format", "dicom")
    assert code == 0 and "note:" in err and "not read from DICOM" in err
    code, _, err = _cli(capsys, "reconstruct", anatomical, "-m", "bicubic", "-o",
                        tmp_path / "a", "--format", "dicom")
    assert code == 2 and err.startswith("error: ") and "not empty" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "reconstruct", anatomical, "-m", "bicubic", "-o",
                        tmp_path / "b.nii.gz", "--format", "dicom")
    assert code == 2 and "series folder" in err and not (tmp_path / "b.nii.gz").exists()


def test_dicom_target_is_checked_before_any_work(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    code, _, err = _cli(capsys, "reconstruct", CT_SERIES, "-m", tmp_path / "missing.safetensors",
                        "-o", busy, "--format", "dicom")
    assert code == 2 and "not empty" in err  # the folder, not the missing model, is reported
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
