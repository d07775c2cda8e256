"""`medvae encode DATASET -o latents/` on real files: every input found and kept apart, resume only
when the same bytes met the same model, failures recorded instead of stopping, torchrun shards."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_model
from pydicom.data import get_testdata_file

from medvae_engine.cli import main
from medvae_engine.imaging.io import read_volume
from medvae_engine.latents import load_latent, sidecar_path
from medvae_engine.models import save_model

SAMPLES = Path(__file__).resolve().parents[2] / "medvae_engine" / "sample_data"
CT, MR = SAMPLES / "ct_small.nii.gz", SAMPLES / "mr_small.nii.gz"
CT_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


def _single(capsys, tmp_path, src, model) -> np.ndarray:
    """The latent one plain single-file encode gives: the reference a dataset latent must equal."""
    ref = tmp_path / "ref" / f"{abs(hash(str(src)))}.latent.nii.gz"
    code, _, err = _cli(capsys, "encode", src, "-m", model, "-o", ref)
    assert code == 0, err
    return load_latent(ref).array


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latents(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.latent.nii.gz"))


@pytest.mark.parametrize("listing", ["folder", "csv"])
def test_same_named_files_in_subfolders_get_distinct_latents(tmp_path, capsys, tiny_2d_path,
                                                             listing):
    data = tmp_path / "data"
    a, b = _copy(CT, data / "a" / "image.nii.gz"), _copy(MR, data / "b" / "image.nii.gz")
    source = data
    if listing == "csv":
        source = data / "list.csv"
        source.write_text("path\na/image.nii.gz\nb/image.nii.gz\n")
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", source, "-m", tiny_2d_path, "-o", out)
    assert code == 0, err
    assert "encoded 2, skipped 0" in stdout
    assert _latents(out) == ["a/image.latent.nii.gz", "b/image.latent.nii.gz"]
    for src, rel in ((a, "a"), (b, "b")):
        latent = load_latent(out / rel / "image.latent.nii.gz")
        np.testing.assert_array_equal(latent.array, _single(capsys, tmp_path, src, tiny_2d_path))
        assert latent.image_shape == read_volume(src).shape
        assert sidecar_path(out / rel / "image.latent.nii.gz").is_file()


def test_nifti_files_in_nested_subfolders_are_walked(tmp_path, capsys, tiny_2d_path):
    data = tmp_path / "data"
    _copy(MR, data / "top.nii.gz")
    _copy(CT, data / "site1" / "case1" / "scan.nii.gz")
    (data / "site2").mkdir()
    nib.save(nib.load(MR), data / "site2" / "scan.nii")  # uncompressed NIfTI is an image too
    (data / "site1" / "notes.txt").write_text("not an image")
    (data / "site2" / ".hidden.nii.gz").write_bytes(b"editor temp file")
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0, err
    assert "encoded 3, skipped 0" in stdout
    assert _latents(out) == ["site1/case1/scan.latent.nii.gz", "site2/scan.latent.nii.gz",
                             "top.latent.nii.gz"]


def test_dicom_series_subfolder_is_one_input(tmp_path, capsys, tiny_2d_path):
    data = tmp_path / "data"
    series = data / "patient7" / "CT5N"
    shutil.copytree(CT_SERIES, series)
    _copy(MR, data / "other" / "mr.nii.gz")
    _copy(CT_SERIES.parents[1] / "DICOMDIR", data / "DICOMDIR")  # DICOM, but not an image
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0, err
    assert "encoded 2, skipped 0" in stdout and "of 2 inputs" in stdout
    assert _latents(out) == ["other/mr.latent.nii.gz", "patient7/CT5N.latent.nii.gz"]
    latent = load_latent(out / "patient7" / "CT5N.latent.nii.gz")
    assert latent.image_shape == read_volume(series).shape
    assert latent.image_shape[2] == len(os.listdir(series)) == 5
    np.testing.assert_array_equal(latent.array, _single(capsys, tmp_path, series, tiny_2d_path))


def test_resume_reencodes_changed_input_and_skips_unchanged(tmp_path, capsys, tiny_2d_path):
    data, out = tmp_path / "data", tmp_path / "latents"
    img = nib.load(MR)  # stored uncompressed so the edit below keeps the byte size
    changing = data / "a.nii"
    data.mkdir()
    nib.save(img, changing)
    _copy(CT, data / "b.nii.gz")
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0 and "encoded 2, skipped 0" in stdout, err
    kept = out / "b.latent.nii.gz"
    kept_stamp = kept.stat().st_mtime_ns

    size = changing.stat().st_size
    arr = np.asarray(img.dataobj).copy()
    arr[10:30, 10:30] = arr.max()  # same file size, other voxels
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), changing)
    assert changing.stat().st_size == size
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0 and "encoded 1, skipped 1" in stdout, err
    assert kept.stat().st_mtime_ns == kept_stamp  # the unchanged input was not re-encoded
    np.testing.assert_array_equal(load_latent(out / "a.latent.nii.gz").array,
                                  _single(capsys, tmp_path, changing, tiny_2d_path))

    code, stdout, _ = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert "encoded 0, skipped 2" in stdout
    other = tmp_path / "retrained" / tiny_2d_path.name  # same model name, other weights
    other.parent.mkdir()
    save_model(tiny_model(2, seed=1), other)
    code, stdout, err = _cli(capsys, "encode", data, "-m", other, "-o", out)
    assert code == 0 and "encoded 2, skipped 0" in stdout, err


def test_corrupt_file_is_recorded_and_the_rest_encoded(tmp_path, capsys, tiny_2d_path):
    data, out = tmp_path / "data", tmp_path / "latents"
    _copy(MR, data / "a.nii.gz")
    corrupt = data / "b.nii.gz"
    corrupt.write_bytes(CT.read_bytes()[:5000])  # a real file cut short
    _copy(CT, data / "c.nii.gz")
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "1 of 3 failed" in lines[0], err
    assert "Traceback" not in err
    assert _latents(out) == ["a.latent.nii.gz", "c.latent.nii.gz"]
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "error"] and len(rows) == 2
    assert rows[1][0] == str(corrupt) and str(corrupt) in rows[1][1] and "\n" not in rows[1][1]
    assert not list(out.glob(".*tmp*"))

    _copy(MR, corrupt)  # repaired: encoded on the next run, the failures list goes away
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0 and "encoded 1, skipped 2" in stdout, err
    assert not (out / "failures.csv").exists()


def test_device_cuda_means_the_local_rank_gpu(tmp_path, capsys, monkeypatch, tiny_2d_path):
    if not torch.cuda.is_available():  # end to end: the device the CLI asks for under torchrun
        monkeypatch.setenv("LOCAL_RANK", "1")
        code, _, err = _cli(capsys, "encode", MR, "-m", tiny_2d_path, "--device", "cuda",
                            "-o", tmp_path / "x.latent.nii.gz")
        assert code == 2 and "'cuda:1'" in err, err
    from medvae_engine.dataset_encode import rank_device

    assert rank_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert rank_device("cuda", {}) == "cuda"
    assert rank_device("cuda:0", {"LOCAL_RANK": "3"}) == "cuda:0"  # an explicit index is kept
    assert rank_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"


def test_torchrun_failures_of_every_rank_are_recorded(tmp_path, tiny_2d_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for name in ("a_bad", "b_bad"):  # sorted order puts one corrupt file in each rank's shard
        (data / name).mkdir(parents=True)
        (data / name / "scan.nii.gz").write_bytes(MR.read_bytes()[:2000])
    _copy(MR, data / "c" / "scan.nii.gz")
    _copy(CT, data / "d" / "scan.nii.gz")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "medvae_engine.cli", "encode", str(data),
           "-m", str(tiny_2d_path), "-o", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert proc.stdout.count("encoded 1, skipped 0 already done, failed 1") == 2, proc.stdout
    assert proc.stderr.count("error: ") == 1 and "error: 2 of 4 failed" in proc.stderr
    assert _latents(out) == ["c/scan.latent.nii.gz", "d/scan.latent.nii.gz"]
    with open(out / "failures.csv", newline="") as f:
        failed = [row[0] for row in list(csv.reader(f))[1:]]
    assert failed == [str(data / "a_bad" / "scan.nii.gz"), str(data / "b_bad" / "scan.nii.gz")]
