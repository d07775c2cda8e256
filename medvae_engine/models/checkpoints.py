"""Reading, checking and writing autoencoder weights.

Foreign checkpoints (.ckpt/.pt/.pth) are read with ``torch.load(weights_only=True)`` (pickled
Python objects only with the explicit, unsafe ``trust`` opt-in); ours are safetensors with the
architecture and model card in the header metadata. The architecture of any checkpoint in the
official key layout is inferred from its tensor shapes. Tensors outside the autoencoder (a training
framework's ``loss.*``, ``model_ema.*``) are ignored, as the official loader ignores them.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ModelError, OutputError
from ..imaging.atomic import atomic_write
from .autoencoder import OFFICIAL_NORM_GROUPS, AutoencoderKL
from .lora import has_lora_keys, merge_lora_state_dict

ANCHOR_KEY = "encoder.conv_in.weight"
LORA_ANCHOR_KEY = "encoder.conv_in.conv.weight"  # a LoRA-wrapped first convolution
# Top-level modules of the autoencoder: everything else in a state dict (loss.*, model_ema.*, ...)
# belongs to the training framework and is ignored, as the official loader's strict=False does.
AUTOENCODER_ROOTS = ("encoder", "decoder", "quant_conv", "post_quant_conv", "channel_ds", "channel_proj",
                     "refiner")
TRUST_HINT = "--trust-checkpoint"

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint split into the autoencoder's tensors and what the loader leaves aside."""

    tensors: dict[str, torch.Tensor]  # official key layout, wrapper prefix removed, LoRA merged
    meta: dict
    ignored: list[str]  # state-dict tensors outside the autoencoder (loss.*, model_ema.*, ...)
    other_entries: list[str]  # top-level entries beside the state dict (epoch, optimizer_states)

    def ignored_summary(self) -> str:
        """'loss.* (5 tensors), model_ema.* (170 tensors)': the ignored tensors by first name part."""
        groups = collections.Counter(key.split(".")[0] for key in self.ignored)
        return ", ".join(f"{root}.* ({n} tensor{'s' if n > 1 else ''})" for root, n in groups.items())


def read_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Read a checkpoint: safetensors, or a torch file with ``weights_only=True``.

    ``trust=True`` is the one explicit opt-in to unpickle arbitrary Python objects; it runs code
    from the file and is only for files from a trusted source.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint file not found")
    other: list[str] = []
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        else:
            meta = {}
            if trust:
                logger.warning("%s: unpickled with %s (unsafe): code the file holds ran", path, TRUST_HINT)
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
            if not isinstance(obj, dict):
                raise ModelError(f"{path}: not a state dict of tensors")
            if isinstance(obj.get("state_dict"), dict):
                other = [str(k) for k in obj if k != "state_dict"]
                obj = obj["state_dict"]
            other += [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    except ModelError:
        raise
    except Exception as e:  # pickled objects refused by weights_only, or corrupt or truncated
        names = _unsafe_globals(path, e) if isinstance(e, pickle.UnpicklingError) else []
        if names:
            raise ModelError(_pickled_objects_message(path, names)) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a readable checkpoint ({first[:200]})") from None
    sd, ignored = _autoencoder_tensors(sd, path)
    if has_lora_keys(sd):
        sd = merge_lora_state_dict(sd)
        meta["lora_merged"] = "true"
    return Checkpoint(sd, meta, ignored, other)


def read_state_dict(path: str | Path, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """The autoencoder's tensors and metadata of a checkpoint (see ``read_checkpoint``)."""
    checkpoint = read_checkpoint(path, trust)
    return checkpoint.tensors, checkpoint.meta


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The Python objects (module.name) a checkpoint would unpickle, found without running them."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the global torch's refusal names
        names = []
    return names or re.findall(r"GLOBAL (\S+) was not an allowed global", str(error))


def _pickled_objects_message(path: Path, names: list[str]) -> str:
    """One line naming the Python objects weights-only loading refused, and the opt-in."""
    return (
        f"{path}: holds pickled Python objects ({', '.join(names)}) that safe weights-only loading "
        f"refuses; unpickling them runs code from the file. Only if you trust its source: pass "
        f"{TRUST_HINT} (unsafe), or convert it once with "
        f"'medvae convert {path} {TRUST_HINT} -o model.safetensors'"
    )


def _autoencoder_tensors(
    sd: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The autoencoder's tensors with any wrapper prefix (``model.``, ``vae.``) removed, and the
    keys of every other tensor; with several copies (an EMA module) the shortest prefix wins."""
    anchors = sorted((k for k in sd if k.endswith((ANCHOR_KEY, LORA_ANCHOR_KEY))), key=len)
    if not anchors:
        raise ModelError(f"{path}: no autoencoder weights found (no key ending in {ANCHOR_KEY})")
    suffix = ANCHOR_KEY if anchors[0].endswith(ANCHOR_KEY) else LORA_ANCHOR_KEY
    prefix = anchors[0][: -len(suffix)]
    if len(anchors) > 1 and len(anchors[1]) == len(anchors[0]):
        raise ModelError(f"{path}: several autoencoders in one file ({anchors[0]}, {anchors[1]})")
    model, ignored = {}, []
    for key, value in sd.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is not None and name.split(".")[0] in AUTOENCODER_ROOTS:
            model[name] = value
        else:
            ignored.append(key)
    return model, ignored


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
            "shortcut": False,  # parameter-free, so shapes cannot tell; official models have none
            "refiner_steps": 0,  # ours only, and our files say so in their header
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


def checkpoint_config(checkpoint: Checkpoint, source: str) -> dict:
    """The architecture: from our safetensors header, else inferred from the tensor shapes."""
    meta = checkpoint.meta
    return json.loads(meta["config"]) if "config" in meta else infer_config(checkpoint.tensors, source)


def model_from_checkpoint(path: str | Path, trust: bool = False) -> tuple[AutoencoderKL, dict]:
    """Build the architecture a checkpoint describes and load its autoencoder tensors strictly."""
    checkpoint = read_checkpoint(path, trust)
    model = AutoencoderKL(**checkpoint_config(checkpoint, str(path)))
    load_strict(model, checkpoint.tensors, str(path))
    log_ignored(checkpoint, path)
    return model, checkpoint.meta


def log_ignored(checkpoint: Checkpoint, path: str | Path) -> None:
    """Name once, after a successful load, the tensors outside the autoencoder that were skipped."""
    if checkpoint.ignored:
        logger.warning(
            "%s: ignored %d tensors outside the autoencoder: %s",
            path, len(checkpoint.ignored), checkpoint.ignored_summary(),
        )


def inspect_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """What loading ``path`` would use and ignore; ModelError when the model tensors do not fit."""
    checkpoint = read_checkpoint(path, trust)
    config = checkpoint_config(checkpoint, str(path))
    load_strict(AutoencoderKL(**config), checkpoint.tensors, str(path))
    return {
        "file": str(path),
        "architecture": config,
        "model_tensors": len(checkpoint.tensors),
        "model_values": sum(t.numel() for t in checkpoint.tensors.values()),
        "lora_merged": checkpoint.meta.get("lora_merged") == "true",
        "ignored_tensors": checkpoint.ignored,
        "ignored_summary": checkpoint.ignored_summary(),
        "other_entries": checkpoint.other_entries,
    }


def convert_checkpoint(source: str | Path, target: str | Path, trust: bool = False) -> Path:
    """Write the autoencoder of ``source`` as our safetensors once (never over an existing file)."""
    source, target = Path(source), Path(target)
    if target.suffix != ".safetensors":
        raise OutputError(f"{target}: the converted weights must be a .safetensors file")
    if target.exists():
        raise OutputError(f"{target}: exists; convert writes a new file and never overwrites")
    model, _ = model_from_checkpoint(source, trust)
    card = {"converted_from": source.name, "source_sha256": file_sha256(source)}
    return save_model(model, target, card)


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
