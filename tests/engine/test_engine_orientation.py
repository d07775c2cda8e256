"""3D models see RAS voxel order (as the official loaders give it); outputs keep the input's order.

One real volume (nibabel's anatomical.nii, stored LAS, odd sizes) is stored again RAS, LPS and with
permuted axes (same anatomy, matching affines, built here by hand); every storage order must give
the same latent and the same reconstruction in world space.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from nibabel.testing import data_path

from medvae_engine import CodecOptions, Volume, decode, encode, load_model, reconstruct
from medvae_engine.codec.latents import load_latent, save_latent
from medvae_engine.imaging.io import read_volume

ANATOMICAL = Path(data_path) / "anatomical.nii"


def flipped(volume: Volume, axis: int) -> Volume:
    """The same anatomy with voxel order reversed along ``axis``."""
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, axis] * (volume.shape[axis] - 1)
    affine[:3, axis] *= -1
    return Volume(np.flip(volume.array, axis).copy(), affine, volume.modality, volume.metadata)


def transposed(volume: Volume, order: tuple[int, int, int]) -> Volume:
    """The same anatomy with array axes permuted (new axis i is old axis order[i])."""
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, list(order)]
    return Volume(np.transpose(volume.array, order).copy(), affine, volume.modality, volume.metadata)


@pytest.fixture(scope="module")
def brain() -> Volume:
    volume = read_volume(ANATOMICAL)
    assert volume.affine[0, 0] < 0 < min(volume.affine[1, 1], volume.affine[2, 2])  # stored LAS
    return volume


@pytest.fixture(scope="module")
def starter_3d():
    return load_model("starter_4_1_3d")


def test_same_reconstruction_whatever_the_storage_order(brain, starter_3d, tmp_path):
    ras = flipped(brain, 0)  # LAS -> RAS
    lps = flipped(brain, 1)  # LAS -> LPS
    permuted = transposed(lps, (2, 0, 1))  # S, L, P axes
    back = {
        "ras": lambda a: np.flip(a, 0),
        "lps": lambda a: np.flip(a, 1),
        "permuted": lambda a: np.flip(np.transpose(a, (1, 2, 0)), 1),
    }
    stored = {"ras": ras, "lps": lps, "permuted": permuted}
    reference = reconstruct(brain, starter_3d)
    tolerance = 1e-4 * float(np.ptp(brain.array))
    latents = {"las": encode(brain, starter_3d)}
    for name, volume in stored.items():
        out = reconstruct(volume, starter_3d)
        assert out.shape == volume.shape  # the input's own voxel order ...
        np.testing.assert_array_equal(out.affine, volume.affine)  # ... and affine
        np.testing.assert_allclose(back[name](out.array), reference.array, atol=tolerance, rtol=0)
        latents[name] = encode(volume, starter_3d)
    for latent in latents.values():  # one RAS latent grid, placed identically in the world
        assert latent.orientation == "RAS"
        np.testing.assert_allclose(latent.array, latents["las"].array, atol=1e-5)
        np.testing.assert_allclose(latent.affine, latents["las"].affine, atol=1e-9)
    # the latent file records both orders; decoding from it restores the LPS input's order
    path = save_latent(latents["lps"], tmp_path / "lps.latent.nii.gz")
    sidecar = json.loads((tmp_path / "lps.latent.json").read_text())
    assert (sidecar["orientation"], sidecar["image_orientation"]) == ("RAS", "LPS")
    assert sidecar["padded_shape"] == [36, 44, 28]  # 33, 41, 25 in RAS order, padded to x4
    out = decode(load_latent(path), starter_3d)
    np.testing.assert_array_equal(out.affine, lps.affine)
    np.testing.assert_allclose(np.flip(out.array, 1), reference.array, atol=tolerance, rtol=0)


def test_the_model_sees_what_monai_orientation_ras_gives(brain):
    """The official loaders' MONAI ``Orientation(axcodes="RAS")`` is the independent reference."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    lps = flipped(Volume(brain.array[:32, :40, :24], brain.affine, "mri"), 1)
    model = tiny_model(3)
    latent = encode(lps, model)
    x = latent.normalization.forward(lps.array)
    orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    oriented = orient(MetaTensor(torch.from_numpy(x)[None], affine=torch.from_numpy(lps.affine)))
    with torch.no_grad():
        expected = model.encode(oriented.as_tensor()[None].float())[0].numpy()
    np.testing.assert_allclose(latent.array, expected, atol=1e-6)
    np.testing.assert_allclose(latent.grid_affine, np.asarray(oriented.affine), atol=1e-9)


def test_2d_models_keep_the_stored_order_and_slice_axis(brain):
    """2D models slice the volume as stored (documented --axis), so no orientation is recorded;
    slices are independent, so reversing the slice order only reverses the output's."""
    model = tiny_model()
    lps = flipped(brain, 1)
    latent = encode(brain, model, CodecOptions(axis=2))
    assert latent.axis == 2 and latent.orientation is None and latent.factors == (4, 4, 1)
    a = reconstruct(brain, model, CodecOptions(axis=1))
    b = reconstruct(lps, model, CodecOptions(axis=1))
    np.testing.assert_array_equal(b.affine, lps.affine)
    np.testing.assert_allclose(np.flip(b.array, 1), a.array, atol=1e-4 * float(np.ptp(brain.array)))


def test_sidecar_orientation_is_checked_and_old_latents_keep_stored_order(brain, tmp_path):
    """A corrupt orientation record is refused by name; a format-1 sidecar (no orientation) decodes
    in stored order, as it was written."""
    from medvae_engine.errors import InputError

    model = tiny_model(3)
    ras = flipped(Volume(brain.array[:16, :16, :12], brain.affine, "mri"), 0)  # already RAS
    path = save_latent(encode(ras, model), tmp_path / "z.latent.nii.gz")
    side = tmp_path / "z.latent.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps(dict(meta, image_orientation="LPQ")))
    with pytest.raises(InputError, match=r"z.latent.json: invalid orientation record"):
        load_latent(path)
    old = {k: v for k, v in meta.items() if k not in ("orientation", "image_orientation")}
    side.write_text(json.dumps(dict(old, format_version=1)))
    latent = load_latent(path)
    assert latent.orientation is None
    np.testing.assert_allclose(decode(latent, model).array, reconstruct(ras, model).array, atol=1e-5)
