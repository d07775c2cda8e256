"""The interpolation shortcut of the starters (``AutoencoderKL(shortcut=True)``): a fresh model is
exactly its interpolation baseline, checked against independent references on real images; the
residual network's output adds to it the same way whole and in tiles; the flag travels with the
weights, and the zoo refuses weights whose flag differs from its entry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
import torch
from conftest import finish, keys_upsample_1d, mni_block, tiny_model
from pydicom.data import get_testdata_file

from medvae_engine.codec import tiled
from medvae_engine.codec.baselines import InterpolationCodec
from medvae_engine.errors import ModelError
from medvae_engine.models import load_model, zoo
from medvae_engine.models.autoencoder import AutoencoderKL
from medvae_engine.models.checkpoints import save_model
from medvae_engine.training.stages import add_shortcut


def _real_ct(side: int = 128) -> torch.Tensor:
    """A crop of pydicom-data's 512^2 abdominal CT (693_UNCR) scaled to [-1, 1]."""
    a = pydicom.dcmread(get_testdata_file("693_UNCR.dcm")).pixel_array.astype(np.float32)
    a = a[200 : 200 + side, 160 : 160 + side]
    return torch.from_numpy((a - a.min()) / (a.max() - a.min()) * 2 - 1)[None, None]


def test_a_fresh_2d_shortcut_model_is_bicubic_on_a_real_ct():
    """Before any training the 2D model reconstructs as the bicubic baseline codec does."""
    x = _real_ct()
    torch.manual_seed(0)
    model = AutoencoderKL(2, 1, 1, 32, (1, 2, 4), 1, 1, norm_groups=8, shortcut=True).eval()
    with torch.no_grad():
        ours, baseline = model(x), InterpolationCodec("bicubic", 2, 4)(x)
        plain = AutoencoderKL(**{**model.config, "shortcut": False}).eval()
        plain.load_state_dict(model.state_dict())
        assert plain(x).abs().max() < 1e-6  # the residual network's output starts at zero
    torch.testing.assert_close(ours, baseline, atol=1e-6, rtol=0)


def test_a_fresh_3d_shortcut_model_is_block_mean_then_tricubic_on_a_real_volume():
    """3D: the latent is the 4^3 block mean and the image its separable cubic-convolution
    upsampling, both computed here from their definitions in numpy on the MNI152 template."""
    v = mni_block()
    torch.manual_seed(0)
    model = AutoencoderKL(3, 1, 1, 32, (1, 2, 4), 1, 1, norm_groups=8, shortcut=True).eval()
    with torch.no_grad():
        z = model.encode(torch.from_numpy(v).float()[None, None])
        y = model.decode(z)[0, 0].double().numpy()
    block_mean = v.reshape(8, 4, 8, 4, 8, 4).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(z[0, 0].double().numpy(), block_mean, atol=1e-5)
    expected = block_mean
    for axis in range(3):
        expected = keys_upsample_1d(expected, 4, axis)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_a_trained_shortcut_model_runs_the_same_in_tiles_as_whole():
    """With a non-zero residual network (random weights), the synchronised tiles give the whole-
    image encode and decode, shortcut included, on a real CT crop."""
    model = AutoencoderKL(**{**tiny_model().config, "shortcut": True}).eval()
    model.load_state_dict(tiny_model(seed=1).state_dict())  # residual heads no longer zero
    x = _real_ct(96)
    with torch.no_grad():
        z_whole = model.encode(x)
        y_whole = model.decode(z_whole)
        z = finish(tiled.encode_steps(model, x, 32, window=None))
        y = finish(tiled.decode_steps(model, z_whole, 32, window=None))
    torch.testing.assert_close(z, z_whole, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_whole, atol=2e-5, rtol=1e-5)
    assert (y_whole - model.image_shortcut(z_whole)).abs().mean() > 1e-3  # the residual counts



def test_adding_a_shortcut_keeps_the_features_and_starts_at_bicubic():
    """``add_shortcut`` (training ``model.shortcut: true`` on a model without one) keeps every
    tensor but the two zeroed output layers, and the result reconstructs as bicubic."""
    old = tiny_model(seed=3)
    new = add_shortcut(old)
    changed = {k for k, v in new.state_dict().items()
               if not torch.equal(v, old.state_dict()[k])}
    assert changed == {"quant_conv.weight", "quant_conv.bias", "decoder.conv_out.weight",
                       "decoder.conv_out.bias"}
    assert torch.equal(new.quant_conv.weight[1:], old.quant_conv.weight[1:])  # log-variance kept
    x = _real_ct(64)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x), InterpolationCodec("bicubic", 2, 4)(x),
                                   atol=1e-6, rtol=0)


def test_the_flag_travels_with_the_weights_and_the_zoo_refuses_a_mismatch(tmp_path, monkeypatch):
    model = AutoencoderKL(**{**tiny_model().config, "shortcut": True}).eval()
    model.load_state_dict(tiny_model(seed=2).state_dict())
    path = save_model(model, tmp_path / "sc.safetensors")
    loaded = load_model(path)
    x = _real_ct(64)
    with torch.no_grad():
        assert loaded.shortcut and torch.allclose(loaded(x), model(x), atol=1e-6)
    spec = dataclasses.replace(zoo.MODELS["starter_4_1_2d"], source="official", filename=path.name,
                               sha256=None, ch_mult=(1, 2, 4), num_res_blocks=1,
                               norm_groups=32, shortcut=False)
    monkeypatch.setitem(zoo.MODELS, spec.name, spec)
    monkeypatch.setenv("MEDVAE_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="sc.safetensors.*with the interpolation shortcut"):
        load_model(spec.name)
