"""Data sources, deterministic sampling, LPIPS from local files, MS-SSIM and adversarial parts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from medvae_engine.data.sources import resolve_builtin
from medvae_engine.errors import MedVAEError, ModelError, WeightsNotFoundError
from medvae_engine.imaging.dicom_write import write_dicom_series
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.models.lpips import BACKBONE_FILES, Lpips
from medvae_engine.training.config import load_config
from medvae_engine.training.data import (
    PatchDataset,
    StepBatches,
    augment,
    load_sources,
    train_loader,
)
from medvae_engine.training.embedders import build_embedder
from medvae_engine.training.losses import (
    PatchDiscriminator,
    build_perceptual,
    hinge_d_loss,
    ms_ssim,
    slices_along,
)


@pytest.mark.parametrize("name", ["pydicom/CT_small.dcm", "pydicom/RG1_UNCR.dcm", "nilearn/mni152",
                                  "dipy/S0_10slices", "nibabel/example4d", "nibabel/anatomical"])
def test_builtin_sources_resolve_through_package_apis(name):
    assert resolve_builtin(name).is_file()


def test_unknown_builtin_is_a_clear_error():
    with pytest.raises(MedVAEError, match="builtin:nilearn/nope"):
        resolve_builtin("nilearn/nope")


def _dataset(config, batch=4):
    train, val = load_sources(config)
    return PatchDataset(train, config, 2, 1, batch, 2, held_out=val), train


def test_folder_and_csv_sources_and_deterministic_crops(write_config, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "a.dcm")
    (tmp_path / "list.csv").write_text("path,modality\nimages/a.dcm,ct\n")
    path = write_config({"data": {"train": ["images", "list.csv", "builtin:dipy/S0_10slices"],
                                  "crop": [16, 32]}})
    config = load_config(path)
    dataset, train = _dataset(config)
    # a folder directly holding DICOM files is one series (as `medvae encode` reads it)
    assert [r.path.name for r in train.refs] == ["images", "a.dcm", "S0_10slices.nii.gz"]
    assert all(-1 <= a.min() and a.max() <= 1 for a in train.arrays)
    first = [dataset[i] for i in range(8)]
    again = [_dataset(config)[0][i] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert [t.shape[-1] for t in first] == [dataset.crop_side(0)] * 4 + [dataset.crop_side(1)] * 4
    assert not torch.equal(first[0], first[1])


def test_folder_sources_walk_like_dataset_encoding(write_config, tmp_path):
    """A training folder is walked as `medvae encode` walks one: a sub-folder of DICOM slices is
    one volume (read as a series), other image files one image each, CSV rows give frame and
    modality."""
    ct = read_volume(get_testdata_file("CT_small.dcm"))
    stack = Volume(np.stack([ct.array, ct.array[::-1], ct.array[:, ::-1]]).astype(np.float32),
                   np.diag([0.7, 0.7, 2.0, 1.0]), "ct", {})
    root = tmp_path / "data"
    write_dicom_series(stack, root / "series1", description="test series")
    write_volume(stack, root / "vol.nii.gz")
    (tmp_path / "rows.csv").write_text("image,frame,modality\ndata/vol.nii.gz,,mri\n")
    config = load_config(write_config({"data": {"train": ["data", "rows.csv"], "crop": [16, 16]}}))
    _, train = _dataset(config)
    assert [r.path.name for r in train.refs] == ["series1", "vol.nii.gz", "vol.nii.gz"]
    assert [a.shape for a in train.arrays] == [(3, 128, 128)] * 3
    assert [r.modality for r in train.refs] == ["auto", "auto", "mri"]


def test_augmentation_turns_and_squeezes_real_crops(write_config):
    """Flips/turns only move pixels; the contrast squeeze is an increasing linear map into a
    sub-range of [-1, 1] at least ``min_range`` wide; both repeat for the same seed."""
    import numpy as np

    from medvae_engine.training.config import AugmentSection

    config = load_config(write_config({"data": {"crop": [32, 32]}}))
    crop = _dataset(config)[0][0][0].numpy()
    geometric = AugmentSection(flips=True)
    moved = [augment(crop, np.random.default_rng(s), geometric) for s in range(8)]
    assert all(np.array_equal(np.sort(m, axis=None), np.sort(crop, axis=None)) for m in moved)
    assert any(not np.array_equal(m, crop) for m in moved)
    squeeze = AugmentSection(contrast=1.0, min_range=0.25)
    for seed in range(8):
        out = augment(crop, np.random.default_rng(seed), squeeze)
        slope = np.polyfit(crop.ravel(), out.ravel(), 1)[0]
        assert 0.25 - 1e-6 <= slope <= 1.0 + 1e-6
        assert np.allclose(out, np.polyval(np.polyfit(crop.ravel(), out.ravel(), 1), crop), atol=1e-5)
        assert -1.0 - 1e-6 <= out.min() and out.max() <= 1.0 + 1e-6
        assert np.array_equal(out, augment(crop, np.random.default_rng(seed), squeeze))
    assert np.array_equal(augment(crop, np.random.default_rng(0), AugmentSection()), crop)


def test_worker_processes_give_the_same_batches(write_config):
    config = load_config(write_config())
    dataset, _ = _dataset(config, batch=2)
    batches = [list(train_loader(dataset, StepBatches(0, 3, 2, 1, 0, 1), w)) for w in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*batches, strict=True))


def test_split_across_ranks_covers_the_global_batch():
    one = list(StepBatches(1, 2, 4, 1, 0, 1))
    two = [list(StepBatches(1, 2, 2, 1, r, 2)) for r in (0, 1)]
    assert one[0] == two[0][0] + two[1][0] == [4, 5, 6, 7]


def test_lpips_without_weights_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=BACKBONE_FILES["lpips_vgg"]):
        build_perceptual("lpips_vgg")


@pytest.mark.parametrize("kind", ["lpips_vgg", "lpips_alex"])
def test_lpips_loads_torchvision_format_files_and_is_differentiable(tmp_path, kind):
    torch.manual_seed(0)
    reference = Lpips(kind)
    backbone = {f"features.{k}": v for k, v in reference.net.features.state_dict().items()}
    torch.save(backbone, tmp_path / "backbone.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand_like(lin.weight) for i, lin in
             enumerate(reference.lins)}
    torch.save(heads, tmp_path / "heads.pth")
    lpips = build_perceptual(kind, tmp_path / "backbone.pth", tmp_path / "heads.pth")
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    d = lpips(x, y)
    assert d.shape == (2,) and torch.all(d > 0) and lpips(x, x).abs().max() < 1e-6
    d.sum().backward()
    assert y.grad.abs().sum() > 0


def test_ms_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = torch.rand(2, 1, 48, 48)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-4)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.all(ms_ssim(x, noisy) < 0.9)


def test_ms_ssim_is_computed_in_float32_under_bf16_autocast():
    x = torch.rand(4, 1, 68, 68)
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ms_ssim(x, y.bfloat16())
    assert inside.dtype == torch.float32
    assert torch.allclose(inside, ms_ssim(x, y.bfloat16().float()), atol=1e-6)


def test_patch_discriminator_and_hinge_loss():
    disc = PatchDiscriminator(1, 8, 3)
    logits = disc(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 1, 6, 6)
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1


def test_slices_along_each_axis():
    x = torch.arange(2 * 3 * 20).float().reshape(1, 1, 2, 3, 20)
    s0, s2 = slices_along(x, 0), slices_along(x, 2)
    assert s0.shape == (2, 1, 3, 20) and torch.equal(s0[1, 0], x[0, 0, 1])
    assert s2.shape == (20, 1, 2, 3) and torch.equal(s2[7, 0], x[0, 0, :, :, 7])


def test_embedder_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="missing.pt"):
        build_embedder("torchscript", tmp_path / "missing.pt", None, 32)
    with pytest.raises(ModelError, match="open_clip|BiomedCLIP"):
        build_embedder("biomedclip", tmp_path, None, 224)
    net = build_embedder("module", None, "torch.nn:Identity", 8)
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 3 * 8 * 8)
