"""Latent files restore the image geometry and units; their affine overlays the image blocks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import tiny_model

from medvae_engine import decode, encode, load_latent, load_model, save_latent
from medvae_engine.codec.pipeline import project_latent
from medvae_engine.errors import InputError, ModelError
from medvae_engine.models import save_model


def test_round_trip_and_sidecar(tmp_path, ct_volume, tiny_2d_path):
    model = load_model(tiny_2d_path)
    latent = encode(ct_volume, model)
    path = save_latent(latent, tmp_path / "ct.latent.nii.gz")
    side = json.loads((tmp_path / "ct.latent.json").read_text())
    assert side["model"] == "tiny2d" and len(side["weights_sha256"]) == 64
    assert side["image_shape"] == [61, 53, 7] and side["padding"] == [3, 3, 0]
    assert side["normalization"] == {"kind": "window", "lo": -1000.0, "hi": 1000.0}
    back = load_latent(path)
    np.testing.assert_allclose(back.array, latent.array)
    out = decode(back)  # the model comes from the sidecar alone
    expected = decode(latent, model)
    np.testing.assert_allclose(out.array, expected.array, atol=1e-4)
    np.testing.assert_array_equal(out.affine, ct_volume.affine)


def test_latent_affine_sits_over_the_encoded_block(tmp_path, ct_volume):
    latent = encode(ct_volume, tiny_model())
    save_latent(latent, tmp_path / "l.nii.gz")
    img = nib.load(tmp_path / "l.nii.gz")
    assert img.shape == (16, 14, 7, 1)  # spatial axes first, channels last
    f = np.asarray(latent.factors)
    for idx in [(0, 0, 0), (3, 5, 2)]:
        world = img.affine @ np.array([*idx, 1.0])
        block_centre = np.asarray(idx) * f + (f - 1) / 2.0
        np.testing.assert_allclose(world, ct_volume.affine @ np.array([*block_centre, 1.0]))


def test_decode_refuses_other_weights(tmp_path, mr_slice, tiny_2d_path):
    latent = encode(mr_slice, load_model(tiny_2d_path))
    save_model(tiny_model(seed=9), tmp_path / "other.safetensors")
    latent.weights_path = str(tmp_path / "other.safetensors")
    latent.model = "other"
    with pytest.raises(ModelError, match="differ"):
        decode(latent)


def test_missing_sidecar_and_projected_latents(tmp_path, mr_slice, tiny_2d_path):
    model = load_model(tiny_2d_path)
    latent = encode(mr_slice, model)
    path = save_latent(latent, tmp_path / "x.nii.gz")
    (tmp_path / "x.json").unlink()
    with pytest.raises(InputError, match="sidecar"):
        load_latent(path)
    projected = project_latent(latent, model)
    assert projected.projected and projected.array.shape == latent.array.shape
    with pytest.raises(ModelError, match="projected"):
        decode(projected, model)
