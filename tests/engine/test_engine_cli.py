"""The medvae command on real files: geometry kept, metrics, dataset mode, torchrun shards, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from medvae_engine.cli import main
from medvae_engine.imaging.io import read_volume

CT_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
ANATOMICAL = Path(data_path) / "anatomical.nii"


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_reconstruct_real_dicom_series_keeps_geometry(tmp_path, capsys, tiny_2d_path):
    series = tmp_path / "series"
    shutil.copytree(CT_SERIES, series)
    out = tmp_path / "recon.nii.gz"
    code, stdout, err = _cli(
        capsys,
        "reconstruct",
        series,
        "-m",
        tiny_2d_path,
        "-o",
        out,
        "--metrics",
        tmp_path / "m.json",
    )
    assert code == 0, err
    src, rec = read_volume(series), read_volume(out)
    assert rec.shape == src.shape and rec.modality == "ct"
    np.testing.assert_allclose(rec.affine, src.affine, atol=1e-4)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert np.isfinite(metrics["psnr_db"]) and "ms_ssim" in metrics
    assert "PatientName" not in json.dumps(nib.load(out).header.structarr.tolist(), default=str)


def test_reconstruct_real_nifti_with_baseline_and_3d_model(tmp_path, capsys, tiny_3d_path):
    for model in ("bicubic", "spline", tiny_3d_path):
        out = tmp_path / f"r_{Path(str(model)).stem}.nii.gz"
        code, _, err = _cli(capsys, "reconstruct", ANATOMICAL, "-m", model, "-o", out)
        assert code == 0, err
        a, b = nib.load(ANATOMICAL), nib.load(out)
        assert b.shape == a.shape
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)


def test_encode_decode_round_trip_reports_ratio(tmp_path, capsys, tiny_2d_path):
    lat = tmp_path / "a.latent.nii.gz"
    code, stdout, err = _cli(capsys, "encode", ANATOMICAL, "-m", tiny_2d_path, "-o", lat)
    assert code == 0, err
    assert "storage ratio" in stdout
    code, _, err = _cli(capsys, "decode", lat, "-o", tmp_path / "back.nii.gz")
    assert code == 0, err
    assert nib.load(tmp_path / "back.nii.gz").shape == nib.load(ANATOMICAL).shape


def test_dataset_mode_is_resumable(tmp_path, capsys, tiny_2d_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("anatomical.nii", "standard.nii.gz"):
        shutil.copy(Path(data_path) / name, data / name)
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0, err
    assert "encoded 2, skipped 0" in stdout
    code, stdout, _ = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert "encoded 0, skipped 2" in stdout


def test_torchrun_two_ranks_shard_the_dataset(tmp_path, tiny_2d_path):
    data = tmp_path / "data"
    data.mkdir()
    src = nib.load(ANATOMICAL)
    for i in range(4):
        nib.save(
            nib.Nifti1Image(src.get_fdata()[:, :, i : i + 3].astype(np.float32), src.affine),
            data / f"case{i}.nii.gz",
        )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "medvae_engine.cli",
        "encode",
        str(data),
        "-m",
        str(tiny_2d_path),
        "-o",
        str(tmp_path / "out"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("encoded 2, skipped 0") == 2  # each rank did its own half
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == [
        f"case{i}.latent.nii.gz" for i in range(4)
    ]


@pytest.mark.parametrize(
    "case",
    [
        "missing", "corrupt", "nan", "unknown_model", "bad_ckpt", "unwritable", "4d", "2d_to_3d",
        "reversed_window",
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case, tiny_2d_path, tiny_3d_path):
    src, model, out = ANATOMICAL, str(tiny_2d_path), tmp_path / "out.nii.gz"
    extra = []
    if case == "missing":
        src = tmp_path / "nope.nii.gz"
    elif case == "corrupt":
        src = tmp_path / "corrupt.nii.gz"
        src.write_bytes(ANATOMICAL.read_bytes()[:300])
    elif case == "nan":
        img = nib.load(ANATOMICAL)
        arr = img.get_fdata().astype(np.float32)
        arr[1, 2, 3] = np.nan
        src = tmp_path / "nan.nii.gz"
        nib.save(nib.Nifti1Image(arr, img.affine), src)
    elif case == "unknown_model":
        model = "medvae_99_1_2d"
    elif case == "bad_ckpt":
        model = tmp_path / "bad.ckpt"
        model.write_bytes(b"not a checkpoint")
    elif case == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "out.nii.gz"
    elif case == "4d":
        src = Path(data_path) / "example4d.nii.gz"
    elif case == "2d_to_3d":
        src, model = get_testdata_file("MR_small.dcm"), str(tiny_3d_path)
    elif case == "reversed_window":
        extra = ["--window", "5", "1"]
    code, _, err = _cli(capsys, "reconstruct", src, "-m", model, "-o", out, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.glob(".*tmp*")] if out.parent.is_dir() else True


def test_models_lists_zoo(capsys):
    code, stdout, _ = _cli(capsys, "models", "--json")
    listed = json.loads(stdout)
    available = {r["name"]: r["available"] for r in listed["autoencoders"]}
    assert code == 0 and "medvae_8_1_3d" in available
    assert all(available[n] for n in ("starter_4_1_2d", "starter_4_3_2d", "starter_4_1_3d"))
    assert [r["name"] for r in listed["sr_models"]] == ["starter_sr_x4"]


def test_official_name_without_weights_says_where_to_put_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDVAE_HOME", str(tmp_path / "cache"))
    code, _, err = _cli(
        capsys, "reconstruct", ANATOMICAL, "-m", "medvae_4_1_2d", "-o", tmp_path / "o.nii.gz"
    )
    assert code == 2 and "vae_4x_1c_2D.ckpt" in err and str(tmp_path / "cache") in err


def test_cached_official_weights_resolve_from_medvae_home(tmp_path, monkeypatch):
    """Weights put in MEDVAE_HOME under the hub file name are found by name (shape-checked)."""
    from medvae_engine.errors import ModelError
    from medvae_engine.models import load_model

    monkeypatch.setenv("MEDVAE_HOME", str(tmp_path))
    (tmp_path / "vae_4x_1c_2D.ckpt").write_bytes(
        Path(get_testdata_file("CT_small.dcm")).read_bytes()
    )
    with pytest.raises(ModelError, match="vae_4x_1c_2D.ckpt: not a readable checkpoint"):
        load_model("medvae_4_1_2d")
