"""`load_model`: a named model, a checkpoint file or a diffusers VAE folder -> a ready module.

Weights of named models resolve in this order: the ``weights=`` path, the cache folder
(``MEDVAE_HOME``, default ~/.cache/medvae), a hub download only when explicitly allowed, otherwise a
ModelError that names the file and where to put it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError, WeightsNotFoundError
from .checkpoints import (
    file_sha256,
    load_strict,
    log_ignored,
    model_from_checkpoint,
    read_checkpoint,
)
from .zoo import HUB_REPO, MODELS, ModelSpec, cache_dir, get_spec


def resolve_weights(
    spec: ModelSpec, weights: str | Path | None = None, download: bool = False
) -> Path:
    """The weights file of a named model, following the documented order."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: weights file for {spec.name} not found")
        return path
    path = spec.local_path()
    if path.is_file():
        return path
    if spec.source == "starter":
        raise WeightsNotFoundError(
            f"{spec.name}: starter weights are not available yet in this installation ({path} missing)"
        )
    if download:
        return download_weights(spec)
    raise WeightsNotFoundError(
        f"{spec.name}: weights file {spec.filename} not found in {cache_dir()}; download "
        f"{spec.hub_file} from huggingface.co/{HUB_REPO} and put it there (or set MEDVAE_HOME, pass "
        f"--weights PATH, or run 'medvae models --download {spec.name}' where the hub is reachable)"
    )


def download_weights(spec: ModelSpec) -> Path:
    """Fetch official weights from the hub into the cache folder (huggingface_hub verifies sha256)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsNotFoundError(
            f"{spec.name}: downloading needs huggingface_hub (pip install 'napari-medvae[hub]')"
        ) from None
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    try:
        got = Path(hf_hub_download(HUB_REPO, spec.hub_file, local_dir=target / "hub"))
    except Exception as e:
        raise WeightsNotFoundError(
            f"{spec.name}: download of {spec.hub_file} failed ({e})"
        ) from None
    final = spec.local_path()
    got.replace(final)
    return final


def load_model(
    name_or_path: str | Path,
    weights: str | Path | None = None,
    device: str = "cpu",
    download: bool = False,
    trust_checkpoint: bool = False,
) -> torch.nn.Module:
    """A model in eval mode on ``device`` with ``encode``, ``project``, ``decode`` and metadata.

    ``name_or_path`` is a zoo name, a checkpoint file (.ckpt/.pt/.pth/.safetensors, architecture
    inferred) or a diffusers AutoencoderKL folder (the Stable Diffusion VAE baseline). Tensors
    outside the autoencoder (loss.*, model_ema.*) are ignored and named in one log line;
    ``trust_checkpoint`` unpickles Python objects in the file, which runs its code (unsafe).
    """
    name = str(name_or_path)
    if name in MODELS:
        spec = get_spec(name)
        path = resolve_weights(spec, weights, download)
        if spec.sha256 and weights is None and file_sha256(path) != spec.sha256:
            raise ModelError(f"{path}: checksum differs from the expected one for {spec.name}")
        model = spec.build()
        checkpoint = read_checkpoint(path, trust_checkpoint)
        load_strict(model, checkpoint.tensors, f"{path} ({spec.name})")
        log_ignored(checkpoint, path)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            from .sd_vae import load_diffusers_vae

            model = load_diffusers_vae(path)
        elif path.is_file():
            model, _ = model_from_checkpoint(path, trust_checkpoint)
        else:
            raise ModelError(
                f"unknown model {name!r}: not a model name ({', '.join(MODELS)}) nor an existing file"
            )
        name = path.stem
    model.name = name
    model.weights_path = str(path)
    return model.to(_device(device)).eval()


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} requested but MPS is not available")
    return dev


def weights_sha256(model: torch.nn.Module) -> str | None:
    """sha256 of the file the model's weights came from (cached on the model)."""
    if getattr(model, "_weights_sha256", None) is None and getattr(model, "weights_path", None):
        path = Path(model.weights_path)
        model._weights_sha256 = file_sha256(path) if path.is_file() else None
    return getattr(model, "_weights_sha256", None)
