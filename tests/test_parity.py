"""Our autoencoder reproduces the official MedVAE code on all seven official configurations.

The fixtures in tests/data/parity/ were made by scripts/make_parity_fixtures.py with the official
package (see the README there): reduced-width official models filled with the weights that
``parity_weights.make_state_dict`` rebuilds here from the key names, their outputs on a fixed input,
and the state-dict layouts of the reduced and of the full-width official models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_weights import make_state_dict

import medvae_engine
from medvae_engine.errors import ModelError
from medvae_engine.models.zoo import get_spec

PARITY_DIR = Path(__file__).parent / "data" / "parity"
TOLERANCE = 1e-4
# name: (spatial_dims, factor, latent channels, image channels, LoRA)
CONFIGS = {
    "medvae_4_1_2d": (2, 4, 1, 1, False),
    "medvae_4_3_2d": (2, 4, 3, 3, True),
    "medvae_4_4_2d": (2, 4, 4, 1, False),
    "medvae_8_1_2d": (2, 8, 1, 1, False),
    "medvae_8_4_2d": (2, 8, 4, 3, True),
    "medvae_4_1_3d": (3, 4, 1, 1, False),
    "medvae_8_1_3d": (3, 8, 1, 1, False),
}
LORA_CONFIGS = [name for name, config in CONFIGS.items() if config[4]]


def read_shapes(name: str, width: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((PARITY_DIR / f"{name}_keys_{width}.json").read_text())
    return {key: tuple(shape) for key, shape in data.items()}


def read_outputs(name: str) -> dict[str, torch.Tensor]:
    with np.load(PARITY_DIR / f"{name}.npz") as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def write_official_checkpoint(name: str, path: Path, zero_lora_up: bool = False) -> Path:
    """The reduced official state dict as an official-style ``{"state_dict": ...}`` checkpoint."""
    arrays = make_state_dict(read_shapes(name, "reduced"))
    state_dict = {key: torch.from_numpy(value) for key, value in arrays.items()}
    if zero_lora_up:
        state_dict = {
            k: torch.zeros_like(v) if k.endswith("lora_up.weight") else v
            for k, v in state_dict.items()
        }
    torch.save({"state_dict": state_dict}, path)
    return path


def merged_lora_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Official LoRA key layout -> plain layout: ``X.conv.weight`` -> ``X.weight``, LoRA dropped."""
    wrapped = {k[: -len(".lora_down.weight")] for k in shapes if k.endswith(".lora_down.weight")}
    merged = {}
    for key, shape in shapes.items():
        prefix, _, param = key.rpartition(".")
        if prefix.endswith((".lora_down", ".lora_up")):
            continue
        if prefix.endswith(".conv") and prefix[: -len(".conv")] in wrapped:
            key = f"{prefix[: -len('.conv')]}.{param}"
        merged[key] = shape
    return merged


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != official {tuple(b.shape)}"
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", CONFIGS)
def test_outputs_match_official(name: str, tmp_path: Path) -> None:
    expected = read_outputs(name)
    model = medvae_engine.load_model(str(write_official_checkpoint(name, tmp_path / "x.ckpt")))
    model.eval()
    dims, factor, latent_channels, image_channels, _ = CONFIGS[name]
    assert (model.spatial_dims, model.factor) == (dims, factor)
    assert (model.latent_channels, model.in_channels) == (latent_channels, image_channels)
    with torch.no_grad():
        z = model.encode(expected["input"])
        projected = model.project(z)
        decoded = model.decode(z)
    assert max_abs_diff(z, expected["mean"]) < TOLERANCE
    assert max_abs_diff(projected, expected["projected"]) < TOLERANCE
    assert max_abs_diff(decoded, expected["decoded"]) < TOLERANCE


@pytest.mark.parametrize("name", ["medvae_4_3_2d", "medvae_4_1_3d"])
def test_posterior_sample_uses_official_log_variance(name: str, tmp_path: Path) -> None:
    expected = read_outputs(name)
    model = medvae_engine.load_model(str(write_official_checkpoint(name, tmp_path / "x.ckpt")))
    model.eval()
    with torch.no_grad():
        sampled = model.encode(
            expected["input"], sample=True, generator=torch.Generator().manual_seed(7)
        )
    noise = torch.randn(expected["mean"].shape, generator=torch.Generator().manual_seed(7))
    official_sample = expected["mean"] + torch.exp(0.5 * expected["logvar"]) * noise
    assert max_abs_diff(sampled, official_sample) < TOLERANCE


@pytest.mark.parametrize("name", LORA_CONFIGS)
def test_fixture_detects_a_missing_lora_update(name: str, tmp_path: Path) -> None:
    """The LoRA tensors change the output far beyond the tolerance, so dropping them would fail."""
    expected = read_outputs(name)
    path = write_official_checkpoint(name, tmp_path / "x.ckpt", zero_lora_up=True)
    model = medvae_engine.load_model(str(path))
    model.eval()
    with torch.no_grad():
        decoded = model.decode(model.encode(expected["input"]))
    assert max_abs_diff(decoded, expected["decoded"]) > 1000 * TOLERANCE


@pytest.mark.parametrize("name", CONFIGS)
def test_zoo_name_rejects_reduced_checkpoint(name: str, tmp_path: Path) -> None:
    path = write_official_checkpoint(name, tmp_path / "reduced.ckpt")
    with pytest.raises(ModelError) as caught:
        medvae_engine.load_model(name, weights=path)
    message = str(caught.value)
    assert "reduced.ckpt" in message
    assert re.search(r"missing|unexpected|shape", message)
    assert re.search(r"(encoder|decoder)\.[\w.]+\.(weight|bias)", message)
    assert "\n" not in message


@pytest.mark.parametrize("name", CONFIGS)
def test_full_width_layout_matches_official_checkpoint(name: str) -> None:
    with torch.device("meta"):
        model = get_spec(name).build()
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    official = merged_lora_shapes(read_shapes(name, "full"))
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    assert len(ours) == (212 if CONFIGS[name][1] == 4 else 256)
