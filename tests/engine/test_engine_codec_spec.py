"""The codec front door: one spec syntax for models, baselines and pixels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file

from medvae_engine.codec.baselines import InterpolationCodec, PixelCodec
from medvae_engine.codec.pipeline import reconstruct
from medvae_engine.codec.spec import load_codec, parse_codec
from medvae_engine.errors import ModelError
from medvae_engine.imaging.io import read_volume
from medvae_engine.models.zoo import get_spec


def test_specs_parse_to_one_form():
    assert str(parse_codec("bicubic@4")) == "bicubic@4"
    assert str(parse_codec("bicubic:8")) == "bicubic@8"  # the older study/analyze form
    assert str(parse_codec("bicubic", default_factor=2)) == "bicubic@2"
    assert parse_codec("pixels").kind == parse_codec("image").kind == "pixels"
    assert parse_codec("starter_4_1_2d").kind == "model"
    assert parse_codec("C:/models/x.ckpt").kind == "model"  # a path with a colon is no baseline
    with pytest.raises(ModelError, match="needs a factor"):
        parse_codec("bicubic")
    with pytest.raises(ModelError, match="integer >= 2"):
        parse_codec("bicubic@x")


def test_baseline_spec_reconstructs_like_downsample_then_upsample():
    """bicubic@4 on a real CT slice equals antialiased bicubic down by 4 and bicubic back up,
    computed here with torch directly (the independent reference)."""
    volume = read_volume(get_testdata_file("CT_small.dcm"))
    codec = load_codec("bicubic@4", spatial_dims=2)
    assert isinstance(codec, InterpolationCodec) and codec.factor == 4
    out = reconstruct(volume, codec)
    x = torch.from_numpy(np.asarray(volume.array, np.float32))[None, None]
    lo, hi = -1000.0, 1000.0  # the CT window the codec normalises with
    xn = (x.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1
    small = F.interpolate(xn, scale_factor=0.25, mode="bicubic", antialias=True)
    up = F.interpolate(small, scale_factor=4, mode="bicubic", align_corners=False)
    expected = ((up + 1) / 2 * (hi - lo) + lo)[0, 0].numpy()
    assert np.abs(np.asarray(out.array, np.float32) - expected).max() < 1e-2


def test_spline_picks_3d_and_pixels_is_identity():
    assert load_codec("spline@4").spatial_dims == 3
    assert load_codec("nearest@4", spatial_dims=3).spatial_dims == 3
    pixels = load_codec("pixels")
    assert isinstance(pixels, PixelCodec) and pixels.factor == 1


def test_zoo_name_loads_the_model():
    if not get_spec("starter_4_1_2d").available:
        pytest.fail("the shipped starter weights are missing")
    model = load_codec("starter_4_1_2d")
    assert model.factor == 4 and model.spatial_dims == 2
