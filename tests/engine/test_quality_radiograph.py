"""`medvae bench quality` on the held-out half of the real RG1_UNCR radiograph at native size: the
region reference, the centred crop, the flat-region offset and the trained-on mark."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from conftest import tiny_model
from pydicom.data import get_testdata_file

from medvae_engine.benchmarks.quality import (
    centred_crop,
    flat_offset,
    markdown,
    quality_report,
    read_reference,
    target_check,
)
from medvae_engine.cli import main
from medvae_engine.models import save_model

HALF = "builtin:pydicom/RG1_UNCR.dcm[:, 0.5:1]"


def test_region_reference_reads_the_held_out_half_at_native_size():
    # the engine's array is (column, row) of the DICOM pixel matrix: axis 1 is the DICOM rows
    pixels = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array.astype(np.float32).T
    half = read_reference(HALF)
    split = round(0.5 * pixels.shape[1])
    assert half.shape == (pixels.shape[0], pixels.shape[1] - split)
    # MONOCHROME1: the engine inverts the stored values, so the sum is one constant
    total = half.array + pixels[:, split:]
    assert total.min() == total.max()
    whole = read_reference("builtin:pydicom/RG1_UNCR.dcm")
    assert np.array_equal(half.array, whole.array[:, split:])
    # the affine moves the origin to the first kept pixel
    assert np.allclose(half.affine[:3, 3], whole.affine[:3, :3] @ [0, split, 0] + whole.affine[:3, 3])


def test_flat_offset_is_the_brightness_shift_over_uniform_regions():
    ref = read_reference(HALF).array[:512, :512].astype(np.float64)
    lo, hi = float(ref.min()), float(ref.max())
    shift = 0.02 * (hi - lo)
    wide = (lo, hi + 10 * shift)  # no clipping of the shifted image
    assert flat_offset(ref, ref + shift, wide) == pytest.approx(100 * shift / (wide[1] - lo), rel=1e-6)
    assert flat_offset(ref, ref, wide) == 0.0
    # texture only: no block is flat, so there is nothing to measure
    noise = np.random.default_rng(0).random((256, 256))
    assert flat_offset(noise, noise, (0.0, 1.0)) is None


def test_centred_crop_keeps_native_pixels():
    half = read_reference(HALF)
    crop = centred_crop(half, 768)
    r0, c0 = (1841 - 768) // 2, (977 - 768) // 2
    assert np.array_equal(crop.array, half.array[r0:r0 + 768, c0:c0 + 768])
    assert centred_crop(half, 0) is half and centred_crop(crop, 768) is crop


def test_bench_scores_a_region_at_native_size_with_its_flat_offset(tmp_path, tiny_2d_path):
    """A 192^2 piece of the held-out half (found to hold 8 flat 32-pixel blocks): scored whole, with
    the flat-region offset; with --max-side 128 on its centred crop, said so in the table."""
    piece = "builtin:pydicom/RG1_UNCR.dcm[0:0.1043, 0.7949:0.8931]"
    stem = tmp_path / "q"
    code = main(["bench", "quality", "--models", str(tiny_2d_path), "--images", piece,
                 "--quality-out", str(stem)])
    assert code == 0
    row = json.loads(stem.with_suffix(".json").read_text())["images"][0]
    assert row["label"] == "RG1_UNCR_0-0.1043_0.7949-0.8931"
    assert row["shape"] == row["native_shape"] == [192, 192]
    # interpolation of block means keeps the brightness of uniform areas
    assert 0 <= row["methods"]["bicubic"]["flat_offset_pct"] < 0.5
    text = stem.with_suffix(".md").read_text()
    assert "flat regions" in text and " of " not in text.split("\n\n")[1]
    assert (tmp_path / "q_RG1_UNCR_0-0.1043_0.7949-0.8931.png").stat().st_size > 5_000
    cropped = quality_report([str(tiny_2d_path)], [piece], None, "fp32", max_side=128)
    assert cropped["images"][0]["shape"] == [128, 128]
    assert "(128x128 of 192x192)" in markdown(cropped)


def test_bad_region_reference_is_a_one_line_error(tmp_path, tiny_2d_path, capsys):
    code = main(["bench", "quality", "--models", str(tiny_2d_path), "--images",
                 "builtin:pydicom/RG1_UNCR.dcm[:, 0.7:0.2]", "--quality-out", str(tmp_path / "q")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: builtin:pydicom/RG1_UNCR.dcm[:, 0.7:0.2]: region")
    assert "\n" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("rg1, marked", [
    ("builtin:pydicom/RG1_UNCR.dcm", True),
    ({"path": "builtin:pydicom/RG1_UNCR.dcm", "region": [None, [0.0, 0.5]]}, False),
])
def test_a_model_trained_on_the_radiograph_is_marked_and_left_out_of_its_target(tmp_path, rg1,
                                                                                 marked):
    """A card listing the whole RG1_UNCR marks the held-out half's row as trained on and measures
    the target margin on the other images only; a card listing the other half does neither."""
    path = tmp_path / "starter_4_3_2d.safetensors"    # a zoo name, so the target applies
    save_model(tiny_model(2), path, {"config": {"data": {"train": [rg1]}}})
    report = quality_report([str(path)], ["builtin:pydicom/MR_small.dcm", HALF], None,
                            "fp32", max_side=128)
    mr, half = report["images"]
    assert mr["trained_on"] == [] and half["trained_on"] == (["starter_4_3_2d"] if marked else [])
    t = target_check("starter_4_3_2d", 2, report)
    margins = [r["methods"]["starter_4_3_2d"]["psnr_db"] - r["methods"]["bicubic"]["psnr_db"]
               for r in (mr, half)]
    assert t["measured_db"] == pytest.approx(margins[0] if marked else np.mean(margins))


def test_bench_quality_scores_refined_latents_as_a_row_of_their_own(tmp_path):
    """`--refine N` adds a row per model with refined latents, never below the one-pass row on a
    real volume, and the refined target line measures that row."""
    path = tmp_path / "starter_4_1_3d.safetensors"  # a zoo name, so the target applies
    save_model(tiny_model(3), path, {})
    report = quality_report([str(path)], ["builtin:nibabel/anatomical"], None, "fp32", refine=3)
    methods = report["images"][0]["methods"]
    one_pass, refined = methods["starter_4_1_3d"], methods["starter_4_1_3d refine 3"]
    assert refined["psnr_db"] > one_pass["psnr_db"]
    t = target_check("starter_4_1_3d", 3, report, "starter_4_1_3d refine 3")
    best = max(methods["trilinear"]["psnr_db"], methods["spline"]["psnr_db"])
    assert t["measured_db"] == pytest.approx(refined["psnr_db"] - best)


def test_a_2d_model_gets_no_refined_row_on_an_image_it_would_tile(tiny_2d_path):
    report = quality_report([str(tiny_2d_path)], ["builtin:pydicom/MR_small.dcm", HALF], None,
                            "fp32", max_side=768, refine=1)
    small, large = (set(r["methods"]) for r in report["images"])
    assert "tiny2d refine 1" in small and "tiny2d refine 1" not in large and "tiny2d" in large
