"""Autoencoder architecture, attention, LoRA, checkpoint inference, strict loading, inflation."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from medvae_engine.errors import ModelError
from medvae_engine.models import (
    AutoencoderKL,
    infer_config,
    inflate_state_dict,
    inject_lora,
    load_model,
    merge_lora,
    merge_lora_state_dict,
    save_model,
)
from medvae_engine.models.autoencoder import AttnBlock
from medvae_engine.models.checkpoints import load_strict


@pytest.mark.parametrize("chunk_bytes", [1024, 256 * 2**20])
def test_attention_equals_naive_softmax_form(monkeypatch, chunk_bytes):
    monkeypatch.setattr("medvae_engine.models.autoencoder.ATTENTION_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(1)
    block = AttnBlock(3, 32, 32).eval()
    x = torch.randn(2, 32, 3, 5, 4)
    with torch.no_grad():
        h = block.norm(x)
        q = block.q(h).flatten(2).transpose(1, 2)
        k = block.k(h).flatten(2)
        v = block.v(h).flatten(2)
        w = torch.softmax(q @ k * 32**-0.5, dim=-1)
        naive = x + block.proj_out((v @ w.transpose(1, 2)).reshape(x.shape))
        assert torch.allclose(block(x), naive, atol=1e-5)


@pytest.mark.parametrize(
    "dims,mult,f", [(2, (1, 2, 4), 4), (2, (1, 2, 4, 4), 8), (3, (1, 2, 4), 4)]
)
def test_shapes_and_factor(dims, mult, f):
    model = AutoencoderKL(dims, 1, 1, 32, mult, 1, 3).eval()
    x = torch.rand(1, 1, *(16,) * dims) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert model.factor == f
        assert z.shape == (1, 3, *(16 // f,) * dims)
        assert model.project(z).shape == z.shape
        assert model.decode(z).shape == x.shape


def test_sampling_is_seeded_and_differs_from_mean():
    model = tiny_model()
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        a = model.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        b = model.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
        assert not torch.equal(a, model.encode(x))


def test_lora_merge_is_exact_for_modules_and_state_dicts():
    torch.manual_seed(0)
    model = tiny_model(z_channels=3)
    params = inject_lora(model, r=4)
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.05)
    x = torch.rand(2, 1, 24, 20) * 2 - 1
    with torch.no_grad():
        wrapped = model(x)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        merged_sd = merge_lora_state_dict(sd)
        merge_lora(model)
        assert torch.allclose(model(x), wrapped, atol=1e-5)
    plain = AutoencoderKL(**model.config).eval()
    load_strict(plain, merged_sd, "merged")
    with torch.no_grad():
        assert torch.allclose(plain(x), wrapped, atol=1e-5)


def test_infer_config_reads_architecture_from_shapes():
    model = AutoencoderKL(3, 1, 1, 64, (1, 2, 4, 4), 2, 4, projection=False)
    assert infer_config(model.state_dict()) == model.config


def test_checkpoint_file_round_trip_and_official_ckpt_layout(tmp_path):
    model = tiny_model(z_channels=3)
    save_model(model, tmp_path / "m.safetensors", {"steps": 1})
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.ckpt")
    x = torch.rand(1, 1, 16, 16)
    for path in (tmp_path / "m.safetensors", tmp_path / "m.ckpt"):
        loaded = load_model(path)
        assert loaded.config == model.config
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_norm_groups_travel_with_the_weights(tmp_path):
    """A model with 4 channels per GroupNorm group reloads with that grouping, not the official 32."""
    torch.manual_seed(0)
    model = AutoencoderKL(2, 1, 1, 32, (1, 2), 1, 1, norm_groups=8).eval()
    assert model.encoder.norm_out.num_groups == 8
    loaded = load_model(save_model(model, tmp_path / "g8.safetensors"))
    assert loaded.config["norm_groups"] == 8 and loaded.encoder.norm_out.num_groups == 8
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    official_grouping = AutoencoderKL(**{**model.config, "norm_groups": 32}).eval()
    official_grouping.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
        assert not torch.allclose(official_grouping(x), model(x), atol=1e-3)


def test_mismatched_checkpoint_lists_keys(tmp_path):
    sd = tiny_model().state_dict()
    sd.pop("decoder.conv_out.bias")
    sd["extra.weight"] = torch.zeros(1)
    model = tiny_model()
    with pytest.raises(ModelError) as err:
        load_strict(model, sd, "bad.ckpt")
    msg = str(err.value)
    assert "bad.ckpt" in msg and "decoder.conv_out.bias" in msg and "extra.weight" in msg
    assert "\n" not in msg


class Payload:
    """An arbitrary Python object: unpickling it could run code, so it must be refused."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(ModelError, match="evil.ckpt"):
        load_model(path)


def test_inflated_3d_model_reproduces_2d_slice_by_slice():
    model2d = tiny_model(z_channels=2)
    model3d = AutoencoderKL(**{**model2d.config, "spatial_dims": 3}).eval()
    load_strict(model3d, inflate_state_dict(model2d.state_dict()), "inflated")
    x2 = torch.rand(1, 1, 16, 20) * 2 - 1
    x3 = x2[:, :, None].expand(1, 1, 8, 16, 20).contiguous()
    with torch.no_grad():
        z2, z3 = model2d.encode(x2), model3d.encode(x3)
        y2, y3 = model2d.decode(z2), model3d.decode(z3)
    for d in range(z3.shape[2]):
        assert torch.allclose(z3[:, :, d], z2, atol=1e-4)
    for d in range(8):
        assert torch.allclose(y3[:, :, d], y2, atol=1e-4)
