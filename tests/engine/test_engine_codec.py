"""Codec on Volumes: exact shapes and geometry, padding, slicing, windows, tiles, precision, edge cases."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import tiny_model

from medvae_engine import CodecOptions, Volume, decode, encode, reconstruct
from medvae_engine.analysis.metrics import psnr
from medvae_engine.codec.baselines import get_baseline
from medvae_engine.codec.pipeline import encode_steps
from medvae_engine.codec.windows import blend, window_starts
from medvae_engine.errors import Cancelled, InputError
from medvae_engine.runtime.progress import run


def _psnr(a, b):
    """PSNR with the reference's own range (the project's metric)."""
    return psnr(a, b, float(np.ptp(a)))


def test_odd_sizes_come_back_exactly(mr_slice):
    crop = Volume(mr_slice.array[:63, :45], mr_slice.affine, "mri")
    model = tiny_model()
    model.name = "tiny"
    latent = encode(crop, model)
    assert latent.array.shape == (1, 16, 12)
    assert latent.padded_shape == (64, 48)
    out = decode(latent, model)
    assert out.shape == crop.shape
    np.testing.assert_array_equal(out.affine, crop.affine)
    assert out.array.min() >= crop.array.min() and out.array.max() <= crop.array.max()


def test_slicewise_axis_choice_and_geometry(ct_volume):
    model = tiny_model()
    latent = encode(ct_volume, model, CodecOptions(axis=2, batch_size=3))
    assert latent.axis == 2 and latent.factors == (4, 4, 1)
    assert latent.array.shape == (1, 16, 14, 7)
    out = decode(latent, model)
    assert out.shape == ct_volume.shape and out.modality == "ct"
    np.testing.assert_array_equal(out.affine, ct_volume.affine)
    # every slice is reconstructed independently: slice 3 alone gives the same result
    single = Volume(ct_volume.array[..., 3:4], ct_volume.affine, "ct")
    alone = reconstruct(single, model, CodecOptions(axis=2))
    np.testing.assert_allclose(alone.array[..., 0], out.array[..., 3], atol=0.05)  # HU


def test_default_axis_is_the_coarsest(ct_volume):
    assert encode(ct_volume, tiny_model()).axis == 2  # spacing 2.5 mm along the last axis


def test_ct_comes_back_in_hounsfield_units(ct_volume):
    out = reconstruct(ct_volume, get_baseline("bicubic", 2, 4))
    assert out.array.min() >= -1000.0 - 1e-3 and out.array.max() <= 1000.0 + 1e-3
    inside = (ct_volume.array > -900) & (ct_volume.array < 900)
    assert np.median(np.abs(out.array - ct_volume.array)[inside]) < 150  # HU, not [-1, 1]


def test_window_blending_is_exact_for_local_operations():
    """With a local encoder/decoder pair, blended windows equal the whole-volume result."""
    x = torch.rand(1, 1, 40, 36, 28)

    def enc(t):
        return torch.nn.functional.avg_pool3d(t, 4)

    def dec(t):
        return torch.nn.functional.interpolate(t, scale_factor=4, mode="nearest")

    *_, (_, _, z) = blend(x, enc, (16, 16, 16), 0.25, 4, 0.25)
    torch.testing.assert_close(z, enc(x))
    *_, (_, _, y) = blend(z, dec, (4, 4, 4), 0.5, 1, 4.0)
    torch.testing.assert_close(y, dec(enc(x)))


def test_windows_cover_every_voxel_and_align_to_factor():
    starts = window_starts(100, 32, 0.25, 4)
    assert starts[0] == 0 and starts[-1] == 68 and all(s % 4 == 0 for s in starts)
    covered = np.zeros(100, bool)
    for s in starts:
        covered[s : s + 32] = True
    assert covered.all()


def test_3d_model_windows_and_2d_tiles_keep_shape_and_range(mr_slice):
    model3 = tiny_model(3)
    vol = Volume(np.random.default_rng(0).random((40, 36, 28)).astype(np.float32), np.eye(4), "mri")
    seen = []
    out = reconstruct(vol, model3, CodecOptions(roi=24), progress=seen.append)
    assert out.shape == vol.shape and np.isfinite(out.array).all()
    assert seen[-1].total > 1  # windows were used
    tiled = reconstruct(mr_slice, tiny_model(), CodecOptions(tile=32, overlap=0.5))
    assert tiled.shape == mr_slice.shape and np.isfinite(tiled.array).all()


def test_bf16_close_to_fp32(mr_slice):
    model = tiny_model()
    a = reconstruct(mr_slice, model)
    b = reconstruct(mr_slice, model, CodecOptions(precision="bf16"))
    assert _psnr(a.array, b.array) > 35


def test_deterministic_by_default_sampling_seeded(mr_slice):
    model = tiny_model()
    a, b = encode(mr_slice, model), encode(mr_slice, model)
    np.testing.assert_array_equal(a.array, b.array)
    s1 = encode(mr_slice, model, CodecOptions(sample=True, seed=5))
    s2 = encode(mr_slice, model, CodecOptions(sample=True, seed=5))
    s3 = encode(mr_slice, model, CodecOptions(sample=True, seed=6))
    np.testing.assert_array_equal(s1.array, s2.array)
    assert not np.array_equal(s1.array, s3.array)


@pytest.mark.parametrize("refine", [0, 3])
def test_a_result_does_not_depend_on_what_the_model_ran_before(mr_slice, refine):
    """The same call on the same model gives the same array: first, again, and after a run in the
    other precision (bf16 runs on a CPU use the channels-last layout, fp32 the default one)."""
    from medvae_engine.models import load_model

    model, fresh = load_model("starter_4_1_2d"), load_model("starter_4_1_2d")
    assert model is not fresh
    bf16, fp32 = (CodecOptions(precision=p, refine=refine) for p in ("bf16", "fp32"))
    first = reconstruct(mr_slice, model, bf16).array
    np.testing.assert_array_equal(reconstruct(mr_slice, model, bf16).array, first)
    after_bf16 = reconstruct(mr_slice, model, fp32).array
    np.testing.assert_array_equal(after_bf16, reconstruct(mr_slice, fresh, fp32).array)
    np.testing.assert_array_equal(reconstruct(mr_slice, model, bf16).array, first)


@pytest.mark.parametrize("dims", [2, 3])
def test_degenerate_inputs_never_nan(dims):
    model = tiny_model(dims)
    shapes = [(2, 2), (9, 9)] if dims == 2 else [(2, 2, 2), (17, 13, 1)]
    for shape in shapes:
        for array in (np.full(shape, 7.0, np.float32), np.random.default_rng(1).random(shape)):
            vol = Volume(array.astype(np.float32), np.eye(4), "mri")
            out = reconstruct(vol, model)
            assert out.shape == shape and np.isfinite(out.array).all()
            if array.min() == array.max():
                np.testing.assert_allclose(out.array, 7.0)


def test_nan_rejected_with_source_named():
    arr = np.ones((8, 8), np.float32)
    arr[2, 3] = np.nan
    vol = Volume(arr, np.eye(4), "mri", {"source_path": "scan.nii.gz"})
    with pytest.raises(InputError, match=r"scan.nii.gz: contains 1 NaN/Inf"):
        encode(vol, tiny_model())


def test_2d_image_refused_by_3d_model(mr_slice):
    with pytest.raises(InputError, match="3D model"):
        encode(mr_slice, tiny_model(3))


def test_progress_and_cancel(ct_volume):
    model = tiny_model()
    seen = []
    encode(ct_volume, model, CodecOptions(axis=2, batch_size=2), progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4] and seen[-1].total == 4
    cancel = threading.Event()

    def stop_after_first(p):
        cancel.set()

    with pytest.raises(Cancelled):
        run(
            encode_steps(ct_volume, model, CodecOptions(axis=2, batch_size=2)),
            stop_after_first,
            cancel,
        )


def test_three_channel_model_takes_grayscale(mr_slice):
    model = tiny_model(z_channels=4, in_channels=3)
    out = reconstruct(mr_slice, model)
    assert out.shape == mr_slice.shape and np.isfinite(out.array).all()


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_2d_baselines_on_real_image(mr_slice, mode):
    out = reconstruct(mr_slice, get_baseline(mode, 2, 4))
    assert out.shape == mr_slice.shape
    assert 15 < _psnr(mr_slice.array, out.array) < 60


@pytest.mark.parametrize("mode", ["trilinear", "spline", "nearest"])
def test_3d_baselines(ct_volume, mode):
    vol = Volume(ct_volume.array[:, :, :5], ct_volume.affine, "ct")
    latent = encode(vol, get_baseline(mode, 3, 4))
    assert latent.array.shape == (1, 16, 14, 2)  # (61, 53, 5) padded to (64, 56, 8), / 4
    assert latent.storage_ratio == pytest.approx(61 * 53 * 5 / (16 * 14 * 2))
    out = decode(latent, get_baseline(mode, 3, 4))
    assert out.shape == vol.shape
