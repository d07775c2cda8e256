"""Reading, checking and writing autoencoder weights.

Foreign checkpoints (.ckpt/.pt/.pth) are read with ``torch.load(weights_only=True)``; ours are
safetensors with the architecture and model card in the header metadata. The architecture of any
checkpoint in the official key layout is inferred from its tensor shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ModelError
from ..imaging.atomic import atomic_write
from .autoencoder import OFFICIAL_NORM_GROUPS, AutoencoderKL
from .lora import has_lora_keys, merge_lora_state_dict

ANCHOR_KEY = "encoder.conv_in.weight"


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a checkpoint; LoRA merged, Lightning ``state_dict`` unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            meta = {}
            sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
            if not isinstance(sd, dict) or not all(
                isinstance(v, torch.Tensor) for v in sd.values()
            ):
                raise ModelError(f"{path}: not a state dict of tensors")
    except ModelError:
        raise
    except Exception as e:  # corrupt, truncated or pickled objects refused by weights_only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a readable checkpoint ({first[:200]})") from None
    sd = _strip_prefix(sd, path)
    if has_lora_keys(sd):
        sd = merge_lora_state_dict(sd)
        meta["lora_merged"] = "true"
    return sd, meta


def _strip_prefix(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix such as ``model.`` or ``vae.`` in front of the official keys."""
    if ANCHOR_KEY in sd or f"{ANCHOR_KEY[:-7]}.conv.weight" in sd:
        return sd
    anchors = [k for k in sd if k.endswith(ANCHOR_KEY)]
    if len(anchors) != 1:
        raise ModelError(f"{path}: no autoencoder weights found (no key ending in {ANCHOR_KEY})")
    prefix = anchors[0][: -len(ANCHOR_KEY)]
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def infer_config(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """AutoencoderKL keyword arguments read off the tensor shapes of a (LoRA-merged) state dict."""
    try:
        conv_in = sd["encoder.conv_in.weight"]
        levels = sorted({int(m[1]) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
        blocks = {int(m[1]) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
        ch = int(conv_in.shape[0])
        ch_mult = [int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in levels]
        return {
            "spatial_dims": conv_in.ndim - 2,
            "in_channels": int(conv_in.shape[1]),
            "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": len(blocks),
            "z_channels": int(sd["quant_conv.weight"].shape[0]) // 2,
            "projection": "channel_proj.weight" in sd,
            "norm_groups": OFFICIAL_NORM_GROUPS,  # shapes cannot tell; the official layout's value
        }
    except (KeyError, IndexError) as e:
        raise ModelError(f"{source}: not a MedVAE autoencoder checkpoint (missing {e})") from None


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor or raise ModelError listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(sd) & set(own))
        if sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} ({len(items)}): {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (checkpoint vs model)", shapes),
            )
            if items
        ]
        raise ModelError(f"{source}: checkpoint does not match the model: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=True)


def model_from_checkpoint(path: str | Path) -> tuple[AutoencoderKL, dict]:
    """Build the architecture a checkpoint describes and load it strictly."""
    sd, meta = read_state_dict(path)
    config = json.loads(meta["config"]) if "config" in meta else infer_config(sd, str(path))
    model = AutoencoderKL(**config)
    load_strict(model, sd, str(path))
    return model, meta


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(
    model: AutoencoderKL, path: str | Path, card: dict | None = None, half: bool = False
) -> Path:
    """Write weights as safetensors with the architecture and a model card in the header."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() for k, v in tensors.items()}
    meta = {"config": json.dumps(model.config), "card": json.dumps(card or {})}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return Path(path)


def inflate_state_dict(sd2d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """2D weights -> 3D by kernel centering: each k x k kernel goes into the centre depth slice.

    1x1 kernels become 1x1x1; the result reproduces the 2D model slice by slice on a volume whose
    slices are identical (zero-padded neighbours contribute nothing through the zero kernel slices).
    """
    out = {}
    for key, w in sd2d.items():
        if w.ndim == 4:
            k = w.shape[-1]
            w3 = w.new_zeros(*w.shape[:2], k, *w.shape[2:])
            w3[:, :, k // 2] = w
            out[key] = w3
        else:
            out[key] = w.clone()
    return out
