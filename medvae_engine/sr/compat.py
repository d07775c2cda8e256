"""Load the published latent-sr UNet checkpoints (PyTorch Lightning ``.ckpt``).

Their layout: ``state_dict`` holds the diffusers UNet2DModel under the ``model.`` prefix, the
flipped cosine table as ``alphas`` (entry 0 = pure noise) and, when trained with EMA, LitEma
shadows under ``model_ema.`` (parameter names with the dots removed). The model is called with
flipped timesteps (T-1-t in DDPM terms) and predicts x0; their flow-matching variant predicts the
velocity with timestep floor(t * (T-1)). The architecture is read off the tensor shapes; the file is
read with ``torch.load(weights_only=True)``, never by unpickling arbitrary objects.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelError
from .unet import SRDenoiser, load_unet_weights

PREFIX = "model."
EMA_PREFIX = "model_ema."


def read_lightning_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, hyper_parameters) of a Lightning checkpoint, safely."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{path}: not a readable checkpoint ({first[:200]})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: not a Lightning checkpoint (no state_dict)")
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not any(k.startswith(PREFIX + "conv_in.") for k in sd):
        raise ModelError(f"{path}: not a latent-sr UNet checkpoint (no '{PREFIX}conv_in.*' keys)")
    hparams = obj.get("hyper_parameters") or {}
    return sd, dict(hparams) if isinstance(hparams, dict) else {}


def infer_unet_kwargs(unet_sd: dict[str, torch.Tensor], hparams: dict, source: str) -> dict:
    """UNet2DModel keyword arguments from the tensor shapes (attention where its keys are)."""
    try:
        conv_in, conv_out = unet_sd["conv_in.weight"], unet_sd["conv_out.weight"]
        levels = sorted({int(m[1]) for k in unet_sd if (m := re.match(r"down_blocks\.(\d+)\.", k))})
        layers = {int(m[1]) for k in unet_sd if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
        channels = [int(unet_sd[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in levels]
        groups = int(hparams.get("norm_num_groups", 32))
    except KeyError as e:
        raise ModelError(f"{source}: unexpected latent-sr UNet layout (missing {e})") from None

    def has_attention(kind: str, i: int) -> bool:
        return any(k.startswith(f"{kind}.{i}.attentions.") for k in unet_sd)

    n = len(levels)
    return {
        "sample_size": int(hparams.get("hr_size", 64)),
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(conv_out.shape[0]),
        "layers_per_block": len(layers),
        "block_out_channels": channels,
        "down_block_types": ["AttnDownBlock2D" if has_attention("down_blocks", i) else "DownBlock2D"
                             for i in range(n)],
        "up_block_types": ["AttnUpBlock2D" if has_attention("up_blocks", i) else "UpBlock2D"
                           for i in range(n)],
        "norm_num_groups": groups,
        "attention_head_dim": 8,
    }


def ema_weights(sd: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor] | None:
    """The LitEma shadow of every UNet parameter, or None when the checkpoint has none."""
    shadows = {name: sd.get(EMA_PREFIX + name.replace(".", "")) for name in names}
    return shadows if all(v is not None for v in shadows.values()) else None


def load_latent_sr_checkpoint(path: str | Path, use_ema: bool = True) -> SRDenoiser:
    """An SRDenoiser (x0 or flow, flipped timesteps) holding a published latent-sr UNet.

    With ``use_ema`` the EMA weights are used when present, as their sampler does.
    """
    path = Path(path)
    sd, hparams = read_lightning_checkpoint(path)
    if hparams.get("beta_schedule", "cosine") != "cosine":
        raise ModelError(f"{path}: only cosine-schedule latent-sr models are supported, this one "
                         f"uses {hparams['beta_schedule']!r}")
    if hparams.get("zlr_init"):
        raise ModelError(f"{path}: z_lr-initialised latent-sr models (zlr_init) are not supported")
    unet_sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    kwargs = infer_unet_kwargs(unet_sd, hparams, str(path))
    flow = "num_sample_steps" in hparams
    steps = int(hparams.get("timesteps", 1000))
    card = {"source": "latent-sr (sebasmos/latent-sr)", "file": path.name,
            "hyper_parameters": {k: v for k, v in hparams.items()
                                 if isinstance(v, (int, float, str, bool, list, tuple))}}
    model = SRDenoiser(kwargs, "flow" if flow else "x0", "flipped", steps, card)
    shadows = ema_weights(sd, [name for name, _ in model.unet.named_parameters()])
    if use_ema and shadows:
        unet_sd = {**unet_sd, **shadows}
        card["weights"] = "ema"
    load_unet_weights(model, unet_sd, str(path))
    table = sd.get("alphas")
    if not flow and isinstance(table, torch.Tensor) and table.numel() == steps:
        model.latent_sr_alphas = table.detach().float().clone()
    return model
