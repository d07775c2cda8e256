"""PNG/JPEG through `medvae reconstruct` and `medvae sr`: results come back in the input's bit depth.

A real MR slice (pydicom MR_small) saved as a plain 8-bit PNG/JPEG and as a 16-bit PNG by Pillow,
with no geometry of ours; outputs are read back with Pillow and compared with the input's dtype and
range, and with the engine's float result rounded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medvae_engine import load_model, reconstruct
from medvae_engine.analysis.metrics import psnr
from medvae_engine.cli import main
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume


def _mr() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float64)


def _save(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def mr_uint8() -> np.ndarray:
    mr = _mr()
    return np.round((mr - mr.min()) / np.ptp(mr) * 255).astype(np.uint8)


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _pixels(path: Path) -> tuple[np.ndarray, str]:
    with Image.open(path) as img:
        return np.asarray(img), img.mode


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_reconstruct_8_bit_picture_gives_8_bit_png(tmp_path, capsys, mr_uint8, suffix):
    source = _save(tmp_path / f"x{suffix}", mr_uint8)
    code, err = _cli(capsys, "reconstruct", source, "-o", tmp_path / "y.png")  # default starter
    assert code == 0, err
    out, mode = _pixels(tmp_path / "y.png")
    given, _ = _pixels(source)
    assert mode == "L" and out.dtype == np.uint8 and out.shape == given.shape
    assert given.min() <= out.min() and out.max() <= given.max()
    volume = read_volume(source)
    expected = np.clip(np.round(reconstruct(volume, load_model("starter_4_1_2d")).array), 0, 255)
    np.testing.assert_array_equal(out, expected.T)  # the engine's result, rounded, in 8 bits
    assert psnr(given, out, 255.0) > 20  # the anatomy, not noise


def test_reconstruct_16_bit_png_stays_16_bit(tmp_path, capsys):
    mr = _mr().astype(np.uint16)
    assert mr.max() > 255
    source = _save(tmp_path / "x16.png", mr)
    code, err = _cli(capsys, "reconstruct", source, "-o", tmp_path / "y16.png")
    assert code == 0, err
    out, mode = _pixels(tmp_path / "y16.png")
    assert mode.startswith("I") and out.dtype == np.uint16 and out.shape == mr.shape
    assert mr.min() <= out.min() and out.max() <= mr.max() and out.max() > 255


def test_float_results_need_a_png_range(tmp_path, capsys, mr_uint8):
    nifti = tmp_path / "mr.nii.gz"
    write_volume(Volume(_mr().astype(np.float32).T, np.eye(4), "mri"), nifti)
    target = tmp_path / "y.png"
    code, err = _cli(capsys, "reconstruct", nifti, "-o", target)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert str(target) in err and "--png-range" in err and not target.exists()
    code, err = _cli(capsys, "reconstruct", nifti, "-o", target, "--png-range", 5, 1)
    assert code == 2 and err.startswith("error: ") and "HI greater than LO" in err
    assert not target.exists()
    lo, hi = 300.0, 1200.0
    code, err = _cli(capsys, "reconstruct", nifti, "-o", target, "--png-range", lo, hi)
    assert code == 0, err
    out, mode = _pixels(target)
    recon = reconstruct(read_volume(nifti), load_model("starter_4_1_2d")).array
    expected = np.clip(np.round((recon.astype(np.float64) - lo) / (hi - lo) * 255), 0, 255)
    assert mode == "L"
    np.testing.assert_array_equal(out, expected.T)
    assert out.min() == 0 and out.max() == 255  # the range really clips both ends of this slice


def test_sr_of_8_bit_png_gives_8_bit_png(tmp_path, capsys, mr_uint8):
    lr = mr_uint8[::2, ::2]  # a real 32 x 32 LR image
    source = _save(tmp_path / "lr.png", lr)
    code, err = _cli(capsys, "sr", source, "-o", tmp_path / "sr.png", "--steps", 2)
    assert code == 0, err
    out, mode = _pixels(tmp_path / "sr.png")
    assert mode == "L" and out.dtype == np.uint8 and out.shape == (128, 128)  # x4, shipped starter
    assert lr.min() <= out.min() and out.max() <= lr.max()
    back = out.astype(float).reshape(32, 4, 32, 4).mean(axis=(1, 3))  # SR -> LR by 4x4 means
    assert np.corrcoef(back.ravel(), lr.astype(float).ravel())[0, 1] > 0.8  # same anatomy
