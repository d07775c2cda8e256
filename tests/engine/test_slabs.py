"""Large operations in slabs under a cancel scope: results equal the plain calls, and a cancel set
while one call runs stops it before that call completes (runtime/slabs.py, runtime/cancel.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nibabel.testing import data_path
from torch.overrides import TorchFunctionMode

from medvae_engine.errors import Cancelled
from medvae_engine.models import autoencoder
from medvae_engine.models.autoencoder import AutoencoderKL
from medvae_engine.runtime import slabs
from medvae_engine.runtime.cancel import cancel_scope, cancellable


@pytest.fixture
def brain() -> torch.Tensor:
    """nibabel's anatomical MRI (33 x 41 x 25) cropped to 32 x 32 x 24, in [-1, 1]."""
    volume = np.asarray(nib.load(Path(data_path) / "anatomical.nii").dataobj, dtype=np.float32)
    crop = volume[:32, 4:36, :24]
    crop = 2 * (crop - crop.min()) / (crop.max() - crop.min()) - 1
    return torch.from_numpy(np.ascontiguousarray(crop))[None, None]


@pytest.fixture
def tiny_slabs(monkeypatch):
    """Slab thresholds small enough that every large-ish operation of a small model is split."""
    monkeypatch.setattr(slabs, "SLAB_FLOPS", 2e6)
    monkeypatch.setattr(slabs, "SLAB_ELEMENTS", 2**11)


class Calls(TorchFunctionMode):
    """Records the torch calls that reach it (below a SlabMode: the slabs it runs); ``then`` runs
    after each call of ``func``."""

    def __init__(self, func=None, then=None):
        super().__init__()
        self.seen: list[object] = []
        self.func, self.then = func, then

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen.append(func)
        if func is self.func and self.then is not None:
            self.then()
        return out


def small_model() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(spatial_dims=3, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, norm_groups=8,
                         z_channels=1).eval()


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_model_in_slabs_equals_the_plain_model_on_real_mri(brain, tiny_slabs, precision):
    model = small_model()
    if precision is not None:  # the codec's bf16 layout (fast_layout): channels-last
        model.to(memory_format=torch.channels_last_3d)
        brain = brain.contiguous(memory_format=torch.channels_last_3d)
    autocast = torch.autocast("cpu", dtype=precision, enabled=precision is not None)
    with torch.no_grad():
        fp32 = model(brain)
        with autocast:
            plain = model(brain).float()
            with Calls() as calls, cancel_scope(threading.Event()):
                slabbed = model(brain).float()
    convs = sum(isinstance(m, torch.nn.Conv3d) for m in model.modules())
    assert calls.seen.count(F.conv3d) > 2 * convs  # the convolutions did run in slabs
    if precision is None:  # float32 GroupNorm from slab statistics, not the whole call
        assert calls.seen.count(F.group_norm) == 0
    if precision is None:
        torch.testing.assert_close(slabbed, plain, rtol=1e-5, atol=1e-5)
    else:  # convolutions and elementwise maps are bitwise equal in bf16; GroupNorm statistics
        # differ in the last fp32 bit, which now and then flips one bf16 rounding, and a random
        # network spreads that like bf16 noise: as close to fp32 as the plain bf16 result
        assert (slabbed - fp32).abs().mean() < 1.2 * (plain - fp32).abs().mean()
        assert (slabbed - fp32).abs().max() < 1.5 * (plain - fp32).abs().max()


def test_each_slabbed_operation_equals_the_plain_call(brain, tiny_slabs):
    torch.manual_seed(1)
    x = torch.cat([brain, brain.flip(2), brain.flip(3), -brain], dim=1).repeat(1, 2, 1, 1, 1)
    w3, b = torch.randn(8, 8, 3, 3, 3) / 10, torch.randn(8)
    gamma, beta = torch.randn(8), torch.randn(8)
    cases = {
        "conv3d 3x3x3": lambda: F.conv3d(x, w3, b, 1, 1),
        "conv3d stride 2 unpadded": lambda: F.conv3d(F.pad(x, (0, 1) * 3), w3, b, 2, 0),
        "conv3d 1x1x1": lambda: F.conv3d(x, w3[:, :, :1, :1, :1], b),
        "conv2d": lambda: F.conv2d(x[:, :, 5], w3[:, :, 1], b, 1, 1),
        "group norm": lambda: F.group_norm(x * 3 + 7, 4, gamma, beta, 1e-6),
        "group norm, float64": lambda: F.group_norm(x.double() - 3, 4, gamma.double(), beta.double()),
        "nearest x2": lambda: F.interpolate(x, scale_factor=2.0, mode="nearest"),
        "pad": lambda: F.pad(x, (0, 1, 2, 0, 3, 1)),
        "swish": lambda: x * torch.sigmoid(x),
        "broadcast add": lambda: x + gamma.view(1, 8, 1, 1, 1),
        "silu": lambda: F.silu(x),
        "matmul": lambda: x.reshape(8, -1, 64)[:, :128] @ x.reshape(8, -1, 64)[:, 5:133].mT,
    }
    for name, call in cases.items():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="autocast" in name):
            plain = call()
            with Calls() as calls, cancel_scope(threading.Event()):
                slabbed = call()
        assert len(calls.seen) > 2, name  # split into slabs
        assert slabbed.dtype == plain.dtype and slabbed.shape == plain.shape, name
        torch.testing.assert_close(slabbed, plain, rtol=1e-5, atol=1e-5, msg=name)
    y = x.clone()
    with cancel_scope(threading.Event()):
        y.mul_(torch.sigmoid(x))
    torch.testing.assert_close(y, x * torch.sigmoid(x), rtol=0, atol=0)


def test_a_cancel_during_one_convolution_stops_it_before_it_completes(brain, tiny_slabs):
    """The event is set after the first slab of one convolution: the next slab does not run."""
    cancel = threading.Event()
    conv = torch.nn.Conv3d(1, 16, 3, padding=1)
    with torch.no_grad(), Calls(F.conv3d, cancel.set) as calls, cancel_scope(cancel), \
            pytest.raises(Cancelled):
        conv(brain)
    assert calls.seen.count(F.conv3d) == 1  # one slab of many ran, then the check stopped it
    with torch.no_grad(), Calls() as calls, cancel_scope(threading.Event()):
        conv(brain)
    assert calls.seen.count(F.conv3d) > 4


def test_a_cancel_during_attention_stops_between_query_blocks(monkeypatch):
    monkeypatch.setattr(autoencoder, "ATTENTION_CHUNK_BYTES", 64 * 4 * 8)  # 8 query rows a block
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 64, 16) for _ in range(3))
    cancel = threading.Event()
    with Calls(torch.softmax, cancel.set) as calls, cancel_scope(cancel), \
            pytest.raises(Cancelled):
        autoencoder.chunked_attention(q, k, v)
    assert calls.seen.count(torch.softmax) == 1  # of 8 blocks


def test_a_cancel_during_a_model_call_in_cancellable_steps(tiny_slabs, brain):
    """A job's steps through ``cancellable``: a cancel set inside the model call ends the job
    there, and the thread is left without a scope."""
    model = small_model()
    cancel = threading.Event()

    def steps():
        yield "before"
        with torch.no_grad():
            model(brain)
        yield "after"

    job = cancellable(steps(), cancel)
    assert next(job) == "before"
    with Calls(F.conv3d, cancel.set) as calls, pytest.raises(Cancelled):
        next(job)
    assert calls.seen.count(F.conv3d) == 1
    called: list[torch.nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: called.append(m)) for m in model.modules()
             if isinstance(m, torch.nn.Conv3d)]
    with torch.no_grad(), Calls() as calls:  # outside the job: no slabs
        model(brain)
    for hook in hooks:
        hook.remove()
    assert calls.seen.count(F.conv3d) == len(called)


def test_a_cancel_inside_no_grad_leaves_grad_mode_and_autocast_as_they_were(brain):
    """The no_grad / autocast exits that run while Cancelled unwinds restore their state (a check
    before those state calls had left gradients off for the rest of the process)."""
    cancel = threading.Event()
    conv = torch.nn.Conv3d(1, 4, 3, padding=1)
    conv.register_forward_pre_hook(lambda *_: cancel.set())
    with cancel_scope(cancel), pytest.raises(Cancelled):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            conv(brain)
            conv(brain)
    assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    assert conv(brain).requires_grad
