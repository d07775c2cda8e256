"""The run-time prediction: the plan it counts is the codec's real plan, the meta-device FLOP count
equals a count on the real model, and `medvae reconstruct` announces long runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model
from torch.utils.flop_counter import FlopCounterMode

from medvae_engine import cli
from medvae_engine.benchmarks.tiling import Independent
from medvae_engine.codec import estimate
from medvae_engine.codec.pipeline import CodecOptions, reconstruct
from medvae_engine.imaging.io import write_volume
from medvae_engine.imaging.volume import Volume


def calls_of(model, volume: Volume, options: CodecOptions) -> list[tuple[int, ...]]:
    """Spatial input shapes of every encoder call a real reconstruction makes (batches unrolled)."""
    shapes = []
    encode = model.encode

    def recording(x, *a, **k):
        shapes.extend([tuple(x.shape[2:])] * x.shape[0])
        return encode(x, *a, **k)

    model.encode = recording
    try:
        reconstruct(volume, model, options)
    finally:
        del model.encode
    return shapes


@pytest.mark.parametrize("case", ["slice", "tiles", "volume_slices"])
def test_2d_plan_is_the_codec_plan(case, mr_slice, ct_volume):
    model = tiny_model(2) if case != "tiles" else Independent(tiny_model(2))
    volume, options = {
        "slice": (mr_slice, CodecOptions()),
        "tiles": (mr_slice, CodecOptions(tile=32, overlap=0.25)),
        "volume_slices": (ct_volume, CodecOptions(axis=2)),
    }[case]
    shapes = calls_of(model, volume, options)
    units, shape = estimate.reconstruction_plan(model, volume, options)
    assert (units, shape) == (len(shapes), shapes[0])
    assert set(shapes) == {shape}


def test_synchronised_tiles_plan_counts_the_work_the_tiles_do(ct_volume):
    """Tiles with global GroupNorm statistics and local attention: the predicted FLOPs are those
    the codec really runs (counted on the real model), halos aside (up to 25% on 16-px tiles)."""
    model = tiny_model(2)
    volume = Volume(np.tile(ct_volume.array[..., :2], (3, 3, 1)), ct_volume.affine, "ct")  # 183x159
    for options in (CodecOptions(axis=2, tile=64, attention_window=16),
                    CodecOptions(axis=2, tile=64, attention_window=None)):
        with FlopCounterMode(display=False) as counter:
            reconstruct(volume, model, options)
        units, shape = estimate.reconstruction_plan(model, volume, options)
        assert (units, shape) == (2 * 3 * 3, (64, 64))  # 2 slices of 3 x 3 tiles
        predicted = estimate.plan_flops(model, volume, options)
        assert 1.0 <= counter.get_total_flops() / predicted < 1.25


def test_3d_plan_is_the_codec_plan_whole_and_windowed(ct_volume):
    model = tiny_model(3)
    for options in (CodecOptions(), CodecOptions(roi=32, overlap=0.25)):
        shapes = calls_of(model, ct_volume, options)
        units, shape = estimate.reconstruction_plan(model, ct_volume, options)
        assert units == len(shapes) and set(shapes) == {shape}
    assert units > 1  # the second plan is windowed


def test_meta_count_equals_a_count_on_the_real_model():
    model = tiny_model(2)
    x = torch.randn(1, 1, 96, 64)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.decode(model.encode(x))
    assert estimate.model_flops(model, (96, 64)) == counter.get_total_flops() > 0


def test_global_attention_makes_large_images_superlinear():
    """Cost per pixel grows with the image: the mid-block attention is quadratic in tokens."""
    model = tiny_model(2)
    small, large = estimate.model_flops(model, (128, 128)), estimate.model_flops(model, (512, 512))
    assert large > 16 * small * 1.05


def test_reconstruct_announces_a_long_run(tmp_path, mr_slice, monkeypatch, capsys, tiny_2d_path):
    src = tmp_path / "mr.nii.gz"
    write_volume(mr_slice, src)
    monkeypatch.setattr(estimate, "probe_gflops", lambda precision="fp32": 1e-3)  # a very slow CPU
    code = cli.main(["reconstruct", str(src), "-m", str(tiny_2d_path), "-o", str(tmp_path / "r.nii.gz")])
    err = capsys.readouterr().err
    assert code == 0
    assert f"note: {src}: expected run time about" in err and "1 x 64x64" in err
    monkeypatch.setattr(estimate, "probe_gflops", lambda precision="fp32": 1e6)  # a fast one
    cli.main(["reconstruct", str(src), "-m", str(tiny_2d_path), "-o", str(tmp_path / "r2.nii.gz")])
    assert "expected run time" not in capsys.readouterr().err
    assert np.isfinite(estimate.probe_gflops()) and estimate.probe_gflops() > 0
