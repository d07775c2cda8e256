"""Windows and tiles on an accelerator: inputs reach the model on its device, blending on the host.

No GPU needed: ``fake_device`` simulates one (data stays on the CPU, device mixing raises as on
CUDA/MPS), so the windowed 3D path and the tiled 2D path run exactly as they would on a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
from conftest import tiny_model
from fake_device import FAKE, FakeDevice, place

from medvae_engine import CodecOptions, Volume, reconstruct
from medvae_engine.benchmarks.tiling import Independent


class Recording(torch.nn.Module):
    """A model on the fake device that records the device of everything it is given."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = place(model)
        for key in ("spatial_dims", "factor", "in_channels", "latent_channels"):
            setattr(self, key, getattr(model, key))
        self.name = "tiny-on-accelerator"
        self.devices: list[torch.device] = []

    def encode(self, x, sample=False, generator=None):
        self.devices.append(x.device)
        return self.model.encode(x, sample=sample, generator=generator)

    def decode(self, z):
        self.devices.append(z.device)
        return self.model.decode(z)


def _on_accelerator(volume: Volume, model: torch.nn.Module, options: CodecOptions):
    wrapped = Recording(model)
    with FakeDevice():
        out = reconstruct(volume, wrapped, options)
    return out, wrapped.devices


def test_3d_sliding_windows_run_on_the_model_device():
    vol = Volume(np.random.default_rng(0).random((24, 24, 20)).astype(np.float32), np.eye(4), "mri")
    options = CodecOptions(roi=16)
    out, devices = _on_accelerator(vol, tiny_model(3), options)
    assert len(devices) > 2 and all(d == FAKE for d in devices)  # several windows, all on device
    assert isinstance(out.array, np.ndarray) and out.shape == vol.shape
    np.testing.assert_allclose(out.array, reconstruct(vol, tiny_model(3), options).array, atol=1e-5)


def test_2d_tiles_run_on_the_model_device(mr_slice):
    """Independent tiles (models ``tiled`` cannot run, such as this wrapper)."""
    options = CodecOptions(tile=32, overlap=0.5)
    out, devices = _on_accelerator(mr_slice, tiny_model(), options)
    assert len(devices) > 2 and all(d == FAKE for d in devices)
    reference = reconstruct(mr_slice, Independent(tiny_model()), options).array  # same path
    np.testing.assert_allclose(out.array, reference, atol=1e-5 * np.ptp(mr_slice.array))


def test_synchronised_2d_tiles_run_on_the_model_device(mr_slice):
    """Tiles with whole-image GroupNorm statistics: each tile goes to the device, maps and
    statistics stay on the host; the same result as on the CPU."""
    options = CodecOptions(tile=32, attention_window=8)
    with FakeDevice():
        out = reconstruct(mr_slice, place(tiny_model()), options)
    reference = reconstruct(mr_slice, tiny_model(), options).array
    np.testing.assert_allclose(out.array, reference, atol=1e-5 * np.ptp(mr_slice.array))
