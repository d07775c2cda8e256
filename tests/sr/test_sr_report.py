"""`medvae bench sr` (the SR model card numbers) on a real held-out slice with a tiny trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medvae_engine.analysis.metrics import psnr, to_unit_range
from medvae_engine.benchmarks.quality import read_reference
from medvae_engine.benchmarks.sr import high_frequency_error, uncertainty_scores
from medvae_engine.cli import main
from medvae_engine.data.degradation import degrade, resize
from medvae_engine.imaging.normalization import fit_normalization

MR_SMALL = "builtin:pydicom/MR_small.dcm"


def test_bench_sr_scores_bicubic_ceiling_and_both_samplers(trained_run, tmp_path, capsys):
    stem = tmp_path / "card" / "tiny_sr"
    code = main(["bench", "sr", "--sr-model", str(trained_run / "sr_model.safetensors"),
                 "--images", MR_SMALL, "--fast", "ddim:2", "--full", "ddpm:6",
                 "--sr-out", str(stem)])
    assert code == 0
    report = json.loads(stem.with_suffix(".json").read_text())
    (row,) = report["images"]
    methods = row["methods"]
    assert list(methods) == ["bicubic", "AE ceiling", "SR ddim-2", "SR ddpm-6",
                             "SR ddim-2 mean of 4"]
    # bicubic recomputed independently: degrade in model space, upsample, back to MR units
    hr = read_reference(MR_SMALL).array
    norm = fit_normalization(hr, "mri")
    up = norm.inverse(resize(degrade(norm.forward(hr), "bicubic", 4), hr.shape, "bicubic"))
    lo, hi = float(hr.min()), float(hr.max())
    expected = psnr(to_unit_range(hr, (lo, hi)), to_unit_range(up, (lo, hi)))
    assert methods["bicubic"]["psnr_db"] == np.float64(expected).item()
    for name in ("SR ddim-2", "SR ddpm-6"):
        m = methods[name]
        assert 0 <= m["hallucination_rate"] <= 1 and 0 <= m["loss_rate"] <= 1 and m["seconds"] > 0
        assert m["hallucination_rate"] + m["loss_rate"] > 0  # a 4-step random-ish model errs
    # bicubic gets hallucination rates too, and every method its high-frequency spectrum error
    assert 0 <= methods["bicubic"]["hallucination_rate"] <= 1
    unit = lambda a: to_unit_range(a, (lo, hi))  # noqa: E731
    assert methods["bicubic"]["hf_spectrum_error"] == high_frequency_error(unit(up), unit(hr))
    assert methods["AE ceiling"]["hf_spectrum_error"] >= 0
    u = row["uncertainty"]
    assert -1 <= u["spearman_sd_abs_error"] <= 1
    assert 0 <= u["hallucination_rate_top_decile_sd"] <= 1
    summary = report["summary"]
    assert set(summary["targets"]) == {"psnr_within_1_5_db_of_bicubic",
                                       "hf_spectrum_closer_than_bicubic",
                                       "fast_within_0_3_db_of_full", "fast_15x_faster_than_full"}
    assert summary["speedup_fast_vs_full"] > 1  # 2 steps against 6
    assert summary["ceiling_holds"]["MR_small"] == all(
        methods["AE ceiling"]["psnr_db"] > methods[k]["psnr_db"] for k in ("SR ddim-2", "SR ddpm-6"))
    card = stem.with_suffix(".md").read_text()
    assert "| MR_small (64, 64) mri |" in card and "Ceiling principle" in card
    # targets read as sentences with their numbers; 2 steps cannot be 15x faster than 6
    assert (f"| ddim-2 >= 15x faster than ddpm-6 end to end | "
            f"{summary['speedup_fast_vs_full']:.1f}x (mean of per-image ratios) | **MISSED** |") in card
    assert "| mean PSNR >= bicubic - 1.5 dB | ddim-2 " in card
    assert stem.with_name("tiny_sr_MR_small.png").stat().st_size > 10_000
    assert "ddim-2 against ddpm-6" in capsys.readouterr().out


def test_bench_sr_refuses_a_model_that_does_not_name_its_autoencoder(tmp_path, capsys):
    from medvae_engine.sr.unet import SRDenoiser, save_sr_model, unet_config

    path = save_sr_model(SRDenoiser(unet_config(1, "tiny"), "x0"), tmp_path / "anon.safetensors", {})
    assert main(["bench", "sr", "--sr-model", str(path), "--sr-out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not name its autoencoder" in err
    assert not list(tmp_path.glob("c*"))


def test_high_frequency_error_known_answers():
    """Scaling an image by a multiplies its power by a^2 in every bin: the error is 2 log10 a;
    a blurred copy loses high-frequency power, a noisy copy gains it."""
    from scipy import ndimage

    hr = read_reference(MR_SMALL).array.astype(np.float64)
    hr = (hr - hr.min()) / np.ptp(hr)
    assert high_frequency_error(hr, hr) == 0
    assert high_frequency_error(3 * hr, hr) == pytest.approx(2 * np.log10(3), abs=1e-9)
    blurred = ndimage.gaussian_filter(hr, 2)
    noisy = hr + np.random.default_rng(0).normal(0, 0.05, hr.shape)
    assert high_frequency_error(blurred, hr) > 0.5 and high_frequency_error(noisy, hr) > 0.1


def test_uncertainty_scores_known_answers():
    rng = np.random.default_rng(1)
    error = rng.random((40, 50))
    hallucinated = error >= np.quantile(error, 0.9)
    perfect = uncertainty_scores(error, error, hallucinated)
    assert perfect["spearman_sd_abs_error"] == pytest.approx(1.0)
    assert perfect["hallucination_rate_top_decile_sd"] == 1.0
    assert perfect["hallucination_rate_rest"] == 0.0
    inverse = uncertainty_scores(-error, error, hallucinated)
    assert inverse["spearman_sd_abs_error"] == pytest.approx(-1.0)
    assert inverse["hallucination_rate_top_decile_sd"] == 0.0
