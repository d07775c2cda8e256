"""The analyze pipeline end to end on real images written to disk (NIfTI, DICOM-derived)."""

import argparse
import csv
import json
import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nilearn.datasets import load_mni152_template
from scipy import ndimage

from medvae_engine.analysis import psnr, to_unit_range
from medvae_engine.analysis.report import add_analyze_arguments, run_analyze
from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume


def parse(argv):
    parser = argparse.ArgumentParser()
    add_analyze_arguments(parser)
    return parser.parse_args(argv)


def interpolated(array, factor=4):
    """Interpolation baseline: cubic down by ``factor`` and back up to the same shape."""
    small = ndimage.zoom(array, 1 / factor, order=3)
    return ndimage.zoom(small, np.array(array.shape) / np.array(small.shape), order=3)


def write_case(folder, name, volume, blur_sigma):
    """Reference, an interpolation baseline, a blurred 'model' and an 'AE' reconstruction."""
    for sub, array in (("hr", volume.array), ("bicubic", interpolated(volume.array)),
                       ("model", ndimage.gaussian_filter(volume.array, blur_sigma)),
                       ("ae", ndimage.gaussian_filter(volume.array, blur_sigma / 2))):
        write_volume(volume.with_array(np.asarray(array, np.float32)),
                     folder / sub / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    ct = read_volume(pydicom.data.get_testdata_file("CT_small.dcm"))
    mr = read_volume(pydicom.data.get_testdata_file("MR_small.dcm"))
    write_case(root, "ct", ct, 1.0)
    write_case(root, "mr", mr, 1.0)
    return root


def test_single_file_report(cases, tmp_path):
    out = tmp_path / "report"
    args = parse(["--reference", str(cases / "hr" / "ct.nii.gz"),
                  "--test", f"bicubic={cases / 'bicubic' / 'ct.nii.gz'}",
                  "--test", f"model={cases / 'model' / 'ct.nii.gz'}",
                  "--ae", f"medvae={cases / 'ae' / 'ct.nii.gz'}", "-o", str(out)])
    assert run_analyze(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ref = read_volume(cases / "hr" / "ct.nii.gz")
    test = read_volume(cases / "bicubic" / "ct.nii.gz")
    vr = (float(ref.array.min()), float(ref.array.max()))
    expected = psnr(to_unit_range(ref.array, vr), to_unit_range(test.array, vr))
    assert metrics["methods"]["bicubic"]["psnr"]["mean"] == pytest.approx(expected)
    assert set(metrics["methods"]) == {"bicubic", "model", "ae:medvae"}
    assert metrics["lpips"]["available"] is False and "alexnet" in metrics["lpips"]["reason"]
    assert metrics["fid"]["bicubic"]["available"] is False
    assert 0 < metrics["methods"]["model"]["hallucination_rate"]["mean"] < 0.5
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["method"] for r in rows] == ["bicubic", "model", "ae:medvae"]
    assert float(rows[0]["psnr_HH1"]) < float(rows[0]["psnr_LL3"])
    diff = nib.load(out / "maps" / "ct" / "bicubic_difference.nii.gz")
    assert np.allclose(diff.affine, ref.affine)
    assert np.allclose(np.squeeze(diff.get_fdata()), test.array - ref.array, atol=1e-3)
    labels = nib.load(out / "maps" / "ct" / "model_hallucination.nii.gz")
    assert labels.get_data_dtype() == np.uint8
    for fig in ("subband_psnr", "spectrum", "hallucination_rates", "example_overlay"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000
    assert not (out / "figures" / "perception_distortion.png").exists()  # no LPIPS weights here


def test_folders_give_paired_statistics_and_fid(cases, tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten())  # 16-d features keep the covariances small
    torch.jit.script(net).save(str(tmp_path / "features.pt"))
    out = tmp_path / "report"
    args = parse(["--reference", str(cases / "hr"), "--test", f"bicubic={cases / 'bicubic'}",
                  "--test", f"model={cases / 'model'}", "-o", str(out), "--no-maps",
                  "--fid-extractor", str(tmp_path / "features.pt")])
    assert run_analyze(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(metrics["fid"][m], float) for m in ("bicubic", "model"))
    assert metrics["methods"]["bicubic"]["n_images"] == 2
    comp = metrics["comparisons"]["bicubic vs model (psnr)"]
    assert comp["n"] == 2 and "wilcoxon_p" in comp
    mr_row = next(r for r in metrics["cases"] if r["case"] == "mr")
    assert "3 of 5 scales" in mr_row["ms_ssim_note"]
    assert not (out / "maps").exists()


def test_volume_report_has_slices_and_identity_is_inf(tmp_path):
    img = load_mni152_template(resolution=1)
    block = np.asarray(img.get_fdata(), np.float32)[70:134, 80:144, 88:92]
    ref = Volume(block, img.affine, "mri")
    write_volume(ref, tmp_path / "hr.nii.gz")
    write_volume(ref, tmp_path / "same.nii.gz")
    write_volume(ref.with_array(interpolated(block, 2).astype(np.float32)), tmp_path / "i.nii.gz")
    out = tmp_path / "report"
    args = parse(["--reference", str(tmp_path / "hr.nii.gz"), "--test",
                  f"copy={tmp_path / 'same.nii.gz'}", "--test", f"interp={tmp_path / 'i.nii.gz'}",
                  "-o", str(out), "--axis", "2"])
    assert run_analyze(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["methods"]["copy"]["psnr"]["mean"] == math.inf
    assert math.isfinite(metrics["methods"]["interp"]["psnr_volume"]["mean"])
    rows = list(csv.DictReader(open(out / "per_slice.csv")))
    assert len(rows) == 2 * 4
    sub = nib.load(out / "maps" / "hr" / "interp_subband_HH1.nii.gz")
    assert sub.shape == block.shape


def test_bad_inputs_leave_nothing_behind(cases, tmp_path):
    ref = cases / "hr" / "ct.nii.gz"
    nan = read_volume(ref)
    nan.array[5, 5] = np.nan
    nib.save(nib.Nifti1Image(nan.array, nan.affine), tmp_path / "nan.nii.gz")
    out = tmp_path / "report"
    with pytest.raises(InputError, match="nan.nii.gz"):
        run_analyze(parse(["--reference", str(ref), "--test", f"x={tmp_path / 'nan.nii.gz'}",
                           "-o", str(out)]))
    with pytest.raises(InputError, match="shape"):
        run_analyze(parse(["--reference", str(ref), "--test",
                           f"x={cases / 'model' / 'mr.nii.gz'}", "-o", str(out)]))
    assert not out.exists() and not list(tmp_path.glob(".report*"))
    with pytest.raises(InputError, match="NAME=PATH"):
        run_analyze(parse(["--reference", str(ref), "--test", "nopath", "-o", str(out)]))
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(OutputError):
        run_analyze(parse(["--reference", str(ref), "--test", f"x={ref}", "-o", str(out)]))


@pytest.mark.parametrize("flag", ["--window", "--data-range"])
def test_reversed_intensity_range_is_refused(cases, tmp_path, flag):
    """HI <= LO would map intensities backwards (or only shift them) and score nonsense."""
    ref, out = cases / "hr" / "ct.nii.gz", tmp_path / "report"
    with pytest.raises(InputError, match=f"{flag} LO HI"):
        run_analyze(parse(["--reference", str(ref), "--test", f"x={ref}", flag, "5", "1",
                           "-o", str(out)]))
    assert not out.exists() and not list(tmp_path.glob(".report*"))


def test_ae_model_and_screening_with_interpolation_codecs(cases, tmp_path):
    out = tmp_path / "report"
    args = parse(["--reference", str(cases / "hr" / "ct.nii.gz"),
                  "--test", f"model={cases / 'model' / 'ct.nii.gz'}", "--ae", "bicubic:2",
                  "--screen", "bicubic:4", "--screen", "bicubic:2", "--screen", "nearest:4",
                  "-o", str(out), "--no-maps"])
    assert run_analyze(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ranking = metrics["ae_ceiling"]
    assert [r["model"] for r in ranking][0] == "bicubic:2"
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert ranking[0]["psnr_mean"] > ranking[1]["psnr_mean"] > ranking[2]["psnr_mean"]
    assert "ae:bicubic:2" in metrics["methods"]


def test_ae_from_a_medvae_checkpoint_file(cases, tmp_path):
    """--ae and --screen with a MedVAE-architecture checkpoint use load_model and reconstruct."""
    import torch

    from medvae_engine.models.autoencoder import AutoencoderKL
    from medvae_engine.models.checkpoints import save_model

    torch.manual_seed(0)
    model = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=1)
    path = save_model(model, tmp_path / "tiny_medvae.safetensors")
    out = tmp_path / "report"
    args = parse(["--reference", str(cases / "hr" / "ct.nii.gz"),
                  "--test", f"bicubic={cases / 'bicubic' / 'ct.nii.gz'}", "--ae", str(path),
                  "--screen", str(path), "--screen", "bicubic:2", "-o", str(out)])
    assert run_analyze(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ae:tiny_medvae" in metrics["methods"]
    assert [r["model"] for r in metrics["ae_ceiling"]] == ["bicubic:2", "tiny_medvae"]  # untrained
    assert metrics["methods"]["bicubic"]["tau"]["mean"] > 0
    assert (out / "maps" / "ct" / "bicubic_hallucination.nii.gz").exists()


def test_lpips_boxes_and_perception_distortion_figure(cases, tmp_path):
    """With (random) LPIPS weights given, LPIPS is reported and the PSNR-LPIPS plane is drawn;
    --box restricts region metrics."""
    import torch

    g = torch.Generator().manual_seed(0)
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3),
             10: (256, 256, 3)}
    backbone = {}
    for i, (o, c, k) in convs.items():
        weight = torch.randn(o, c, k, k, generator=g) * (c * k * k) ** -0.5
        backbone[f"features.{i}.weight"] = weight
        backbone[f"features.{i}.bias"] = torch.zeros(o)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
             for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(heads, tmp_path / "alex.pth")
    out = tmp_path / "report"
    args = parse(["--reference", str(cases / "hr" / "ct.nii.gz"),
                  "--test", f"bicubic={cases / 'bicubic' / 'ct.nii.gz'}",
                  "--test", f"model={cases / 'model' / 'ct.nii.gz'}", "--box", "20:60,30:90",
                  "--lpips-backbone", str(tmp_path / "alexnet.pth"),
                  "--lpips-heads", str(tmp_path / "alex.pth"), "-o", str(out), "--no-maps"])
    assert run_analyze(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lpips"] == "available"
    assert metrics["methods"]["bicubic"]["lpips"]["mean"] > 0
    assert (out / "figures" / "perception_distortion.png").exists()
    ref = read_volume(cases / "hr" / "ct.nii.gz").array
    test = read_volume(cases / "bicubic" / "ct.nii.gz").array
    vr = (float(ref.min()), float(ref.max()))
    box = np.zeros(ref.shape, bool)
    box[20:60, 30:90] = True
    expected = psnr(to_unit_range(ref, vr), to_unit_range(test, vr), region=box)
    assert metrics["methods"]["bicubic"]["psnr_region"]["mean"] == pytest.approx(expected)
    assert "psnr_background" in metrics["methods"]["bicubic"]
