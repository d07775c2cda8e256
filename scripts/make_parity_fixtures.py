"""Make the golden parity fixtures in tests/data/parity/ from the OFFICIAL MedVAE code.

Runs in a separate venv holding the official package, never in the project venv:

    python3 -m venv /work/official_venv
    /work/official_venv/bin/pip install torch==2.13.0 einops numpy safetensors
    /work/official_venv/bin/pip install --no-deps medvae==0.1.7
    /work/official_venv/bin/python scripts/make_parity_fixtures.py

or, equivalently, with the official model files from the repository (commit 27f165f, what medvae
0.1.7 ships) and einops on PYTHONPATH (see tests/data/parity/README.md).

For each official configuration it builds the official model at reduced width (ch=32), fills every
tensor from ``tests/parity_weights.py``, checks that the official loader accepts the weights as an
official-style checkpoint, runs a fixed input and saves input, posterior mean and log-variance,
stage-2 projection and decoding. It also records the state-dict keys and shapes of the reduced
model and of the full-width (ch=128) model, built on the meta device, as the official checkpoints
hold them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from parity_weights import make_state_dict, unit_uniform  # noqa: E402

OUT_DIR = ROOT / "tests" / "data" / "parity"
REDUCED_CH = 32
FULL_CH = 128
LORA_RANK = 4
INPUT_SHAPE_2D = (2, 32, 48)  # batch, H, W (non-square on purpose)
INPUT_SHAPE_3D = (1, 16, 16, 24)  # batch, D, H, W

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


def import_official():
    """The official model classes and LoRA injector, without running medvae/__init__.py.

    The package ``__init__`` pulls the inference stack (monai, hydra, open_clip, ...); a bare
    package module with the right ``__path__`` lets the model submodules import with torch, numpy
    and einops alone.
    """
    spec = importlib.util.find_spec("medvae")
    if spec is None:
        raise SystemExit("the official 'medvae' package is not installed in this interpreter")
    package = types.ModuleType("medvae")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["medvae"] = package
    from medvae.models.autoencoder_kl import AutoencoderKL as AutoencoderKL2D
    from medvae.models.autoencoder_kl_3d import AutoencoderKL as AutoencoderKL3D
    from medvae.utils.lora import inject_trainable_lora_extended

    return AutoencoderKL2D, AutoencoderKL3D, inject_trainable_lora_extended


def ddconfig(ch: int, factor: int, latent_channels: int, image_channels: int) -> dict:
    """The official ``ddconfig`` of a MedVAE model at base width ``ch``."""
    return {
        "double_z": True,
        "z_channels": latent_channels,
        "resolution": 256,
        "in_channels": image_channels,
        "out_ch": image_channels,
        "ch": ch,
        "ch_mult": [1, 2, 4] if factor == 4 else [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def build_official(official, name: str, ch: int) -> torch.nn.Module:
    """The official model of ``name`` at width ``ch``, LoRA-injected like the official factory."""
    autoencoder_2d, autoencoder_3d, inject_lora = official
    dims, factor, latent_channels, image_channels, lora = CONFIGS[name]
    cls = autoencoder_2d if dims == 2 else autoencoder_3d
    model = cls(
        ddconfig=ddconfig(ch, factor, latent_channels, image_channels), embed_dim=latent_channels
    )
    if lora:
        inject_lora(model, {"ResnetBlock", "AttnBlock"}, r=LORA_RANK)
    return model


def shapes_of(model: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def make_input(name: str) -> np.ndarray:
    """A fixed input in [-1, 1]: smooth oriented waves plus a little noise."""
    dims, _, _, image_channels, _ = CONFIGS[name]
    batch, *spatial = INPUT_SHAPE_2D if dims == 2 else INPUT_SHAPE_3D
    shape = (batch, image_channels, *spatial)
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in spatial], indexing="ij")
    out = np.empty(shape)
    for b in range(batch):
        for c in range(image_channels):
            phase = 0.9 * b + 1.7 * c
            waves = sum((1.3 + 0.8 * i + 0.3 * c) * g for i, g in enumerate(grids))
            ring = sum((g - 0.5 + 0.1 * b) ** 2 for g in grids)
            out[b, c] = 0.6 * np.sin(2 * np.pi * waves + phase) * np.cos(5.0 * ring)
    out += 0.15 * unit_uniform(f"input:{name}", shape)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def official_loader_round_trip(
    official, name: str, state_dict: dict, folder: Path
) -> torch.nn.Module:
    """Save ``state_dict`` as an official checkpoint, load it with the official loader, check it."""
    path = folder / f"{name}.ckpt"
    torch.save({"state_dict": state_dict}, path)
    model = build_official(official, name, REDUCED_CH)
    model.init_from_ckpt(str(path), state_dict=True)
    loaded = model.state_dict()
    if loaded.keys() != state_dict.keys():
        raise SystemExit(f"{name}: the official model's keys differ from the checkpoint's")
    for key, value in state_dict.items():
        if not torch.equal(loaded[key], value):
            raise SystemExit(f"{name}: the official loader did not load {key}")
    return model


@torch.no_grad()
def run_official(model: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """Posterior mean and log-variance, stage-2 projection and decoding of the mean."""
    model.eval()
    inputs = torch.from_numpy(x)
    posterior = model.encode(inputs)
    z, _, projected = model.compute_latent_proj(inputs, sample_posterior=False)
    if not torch.equal(z, posterior.mode()):
        raise SystemExit("compute_latent_proj(sample_posterior=False) did not return the mean")
    decoded = model.decode(posterior.mode())
    return {
        "input": x,
        "mean": posterior.mode().numpy(),
        "logvar": posterior.logvar.numpy(),
        "projected": projected.numpy(),
        "decoded": decoded.numpy(),
    }


def write_shapes(path: Path, shapes: dict[str, list[int]]) -> None:
    """``{key: shape}`` as JSON, one key per line, in state-dict order."""
    lines = [f"  {json.dumps(key)}: {json.dumps(shape)}" for key, shape in shapes.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def make_fixtures(name: str, official, folder: Path) -> None:
    """All fixture files of one configuration."""
    reduced_shapes = shapes_of(build_official(official, name, REDUCED_CH))
    state_dict = {k: torch.from_numpy(v) for k, v in make_state_dict(reduced_shapes).items()}
    model = official_loader_round_trip(official, name, state_dict, folder)
    outputs = run_official(model, make_input(name))
    np.savez_compressed(OUT_DIR / f"{name}.npz", **outputs)
    write_shapes(OUT_DIR / f"{name}_keys_reduced.json", reduced_shapes)
    with torch.device("meta"):
        full = build_official(official, name, FULL_CH)
    full_shapes = shapes_of(full)
    write_shapes(OUT_DIR / f"{name}_keys_full.json", full_shapes)
    params = sum(int(np.prod(s)) for s in full_shapes.values())
    summary = ", ".join(
        f"{k} {tuple(v.shape)} max|.|={np.abs(v).max():.3g}" for k, v in outputs.items()
    )
    print(
        f"{name}: reduced {len(reduced_shapes)} tensors, full {len(full_shapes)} tensors "
        f"({params / 1e6:.1f}M values); {summary}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(CONFIGS), help="configurations to make")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    official = import_official()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.names:
            make_fixtures(name, official, Path(folder))


if __name__ == "__main__":
    main()
