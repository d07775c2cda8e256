"""LoRA merge exactness and 2D -> 3D inflation as the training stages use them."""

from __future__ import annotations

import numpy as np
import torch
from pydicom.data import get_testdata_file

from medvae_engine.imaging.io import read_volume
from medvae_engine.imaging.normalization import fit_normalization
from medvae_engine.models.autoencoder import AutoencoderKL
from medvae_engine.models.lora import LoRAConv, inject_lora, merge_lora
from medvae_engine.training.stages import inflate_to_3d, last_trainable_layer


def _ct_slice(side: int) -> torch.Tensor:
    volume = read_volume(get_testdata_file("CT_small.dcm"))
    a = fit_normalization(volume.array, volume.modality).forward(volume.array)
    return torch.from_numpy(np.ascontiguousarray(a[:side, :side]))[None, None]


def test_lora_merge_is_exact_after_training_the_lora_weights():
    torch.manual_seed(0)
    model = AutoencoderKL(2, 1, 1, 32, (1, 2), 1, 1)
    params = inject_lora(model, r=3)
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    assert last_trainable_layer(model) is model.decoder.up[0].block[-1].conv2.lora_up.weight
    x = _ct_slice(32)
    with torch.no_grad():
        wrapped = model(x)
        merged = merge_lora(model)(x)
    assert not any(isinstance(m, LoRAConv) for m in model.modules())
    assert (wrapped - merged).abs().max() < 1e-5
    assert (wrapped - x).abs().mean() > 1e-3  # the LoRA update did change the output


def test_inflated_3d_model_reproduces_2d_model_slice_by_slice():
    torch.manual_seed(0)
    model2d = AutoencoderKL(2, 1, 1, 32, (1, 2), 1, 1).eval()
    model3d = inflate_to_3d(model2d).eval()
    x2 = _ct_slice(32)
    x3 = x2[:, :, None].expand(-1, -1, 8, -1, -1).contiguous()
    with torch.no_grad():
        y2, z2 = model2d(x2), model2d.encode(x2)
        y3, z3 = model3d(x3), model3d.encode(x3)
    assert y3.shape == (1, 1, 8, 32, 32)
    for d in range(8):
        assert (y3[:, :, d] - y2).abs().max() < 1e-4
    for d in range(4):
        assert (z3[:, :, d] - z2).abs().max() < 1e-4
