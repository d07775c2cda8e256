"""Synchronised 2D tiles (``medvae_engine.codec.tiled``): with the whole image's GroupNorm statistics the
tiles give the plain whole-image forward; on a real CT they are far closer to it than independent
tiles; progress comes per tile and cancel stops between tiles."""

from __future__ import annotations

import threading

import numpy as np
import pydicom
import pytest
import torch
from conftest import finish, tiny_model
from pydicom.data import get_testdata_file

from medvae_engine import CodecOptions, Volume, reconstruct
from medvae_engine.benchmarks.tiling import Independent
from medvae_engine.codec import tiled
from medvae_engine.codec.pipeline import reconstruct_steps
from medvae_engine.errors import Cancelled
from medvae_engine.models import load_model
from medvae_engine.runtime.progress import Progress, run


@pytest.fixture(scope="module")
def ct_slice() -> Volume:
    """A 192^2 crop of pydicom-data's real 512^2 abdominal CT slice (693_UNCR), in HU."""
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return Volume(hu[160:352, 150:342], np.eye(4), "ct")


@pytest.fixture(scope="module")
def starter():
    return load_model("starter_4_1_2d")


def _psnr(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    return float(10 * np.log10(data_range**2 / np.mean((reference.astype(np.float64) - test) ** 2)))


def test_global_statistics_give_the_whole_image_forward(starter):
    """Tiles of 32 px with halos and global GroupNorm statistics, global attention: the plain
    whole-image encode and decode, to float tolerance, on a real MR image of odd tile counts."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    a = ds.pixel_array.astype(np.float32)
    x = torch.from_numpy(a / a.max() * 2 - 1)[None, None, :64, :48]
    with torch.no_grad():
        z_whole = starter.encode(x)
        y_whole = starter.decode(z_whole)
        z = finish(tiled.encode_steps(starter, x, 32, window=None))
        y = finish(tiled.decode_steps(starter, z_whole, 24, window=None))
    assert len(tiled.tile_grid((64, 48), 4, 32)) == 4 and len(tiled.tile_grid((64, 48), 4, 24)) == 6
    torch.testing.assert_close(z, z_whole, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_whole, atol=2e-5, rtol=1e-5)


def test_codec_tiles_equal_whole_when_the_latent_fits_one_attention_window(ct_slice, starter):
    """Through the codec with the default attention window (the latent fits it): random-weight
    and starter models, encode to decode."""
    for model in (tiny_model(), starter):
        whole = reconstruct(ct_slice, model, CodecOptions(whole=True)).array
        tiles = reconstruct(ct_slice, model, CodecOptions(tile=64)).array
        np.testing.assert_allclose(tiles, whole, atol=0.05)  # HU, of a 2000 HU window


def test_real_ct_tiles_are_far_closer_to_whole_than_independent_tiles(ct_slice, starter):
    whole = reconstruct(ct_slice, starter, CodecOptions(whole=True)).array
    synced = reconstruct(ct_slice, starter, CodecOptions(tile=64)).array
    independent = reconstruct(ct_slice, Independent(starter), CodecOptions(tile=64)).array
    new, old = _psnr(whole, synced, 2000.0), _psnr(whole, independent, 2000.0)  # the HU window
    assert new > 70 and old < 50, (new, old)


def test_local_attention_stays_close_to_global_on_a_real_image(ct_slice, starter):
    """A window of 16 latent tokens (64 px) on a 192^2 CT: queries see 1/9 of the keys."""
    whole = reconstruct(ct_slice, starter, CodecOptions(whole=True)).array
    local = reconstruct(ct_slice, starter, CodecOptions(tile=64, attention_window=16)).array
    assert 35 < _psnr(whole, local, 2000.0) < 70  # close, but the attention did change


def test_progress_per_tile_and_cancel_between_tiles(ct_slice, monkeypatch):
    model = tiny_model()
    seen: list[Progress] = []
    reconstruct(ct_slice, model, CodecOptions(tile=64), progress=seen.append)
    encoding = [p for p in seen if p.stage == "encode"]
    tiles = len(tiled.tile_grid((192, 192), 4, 64))
    assert tiles == 9 and len(encoding) == encoding[-1].total > 10 * tiles  # every tile, stage
    assert [p.done for p in encoding] == list(range(1, len(encoding) + 1))
    assert seen[-1].stage == "decode" and seen[-1].done == seen[-1].total

    ran: list[int] = []  # the tiles the encoder really computes
    steps = tiled.encode_steps

    def counting(*args, **kwargs):
        gen = steps(*args, **kwargs)
        while True:
            try:
                tick = next(gen)
            except StopIteration as stop:
                return stop.value
            ran.append(tick[0])
            yield tick

    monkeypatch.setattr(tiled, "encode_steps", counting)
    cancel, calls = threading.Event(), []

    def cancel_at_the_third(p: Progress) -> None:
        calls.append(p)
        if len(calls) == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        run(reconstruct_steps(ct_slice, model, CodecOptions(tile=64)), cancel_at_the_third, cancel)
    assert len(calls) == 3 and len(ran) == 4  # the tile after the third is the last one run
