"""The conditional denoiser: a diffusers UNet2DModel over [noisy HR latent, upsampled LR latent].

Configs are plain data (the UNet2DModel keyword arguments); ``latent_sr`` is the published
configuration (channels 128, 256, 512, 512; two layers per block; attention at the 16x16 latent
resolution plus the mid block; sinusoidal time embedding), ``tiny`` a small one for tests. Our SR
model files are safetensors with the config and a training card in the header.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelError
from ..imaging.atomic import atomic_write
from ..models.checkpoints import file_sha256, load_strict
from ..models.zoo import SR_MODELS
from .objectives import OBJECTIVES
from .schedules import TRAIN_STEPS

PRESETS = {
    "latent_sr": {"channels": (128, 256, 512, 512), "layers": 2, "attention": (16,),
                  "sample_size": 64, "groups": 32, "head_dim": 8},
    "tiny": {"channels": (16, 32), "layers": 1, "attention": (4,), "sample_size": 8, "groups": 8,
             "head_dim": 8},
}
CONVENTIONS = ("ddpm", "flipped")  # flipped: latent-sr's model timestep T-1-t
CONDITIONINGS = ("latent", "pixel")  # LR encoded then latent upsampled / LR upsampled then encoded


def unet_config(latent_channels: int, preset: str = "latent_sr", **overrides) -> dict:
    """UNet2DModel keyword arguments: preset geometry, 2C inputs (noisy + condition), C outputs."""
    if preset not in PRESETS:
        raise ModelError(f"unknown UNet preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = {**PRESETS[preset], **overrides}
    channels = tuple(int(c) for c in p["channels"])
    down, up = block_types(len(channels), int(p["sample_size"]), tuple(p["attention"]))
    return {
        "sample_size": int(p["sample_size"]),
        "in_channels": 2 * latent_channels,
        "out_channels": latent_channels,
        "layers_per_block": int(p["layers"]),
        "block_out_channels": list(channels),
        "down_block_types": list(down),
        "up_block_types": list(up),
        "norm_num_groups": int(p["groups"]),
        "attention_head_dim": int(p["head_dim"]),
    }


def block_types(levels: int, sample_size: int, attention: tuple[int, ...]):
    """Attention blocks at the levels whose resolution (from ``sample_size``) is listed."""
    sizes = [max(sample_size // 2**i, 1) for i in range(levels)]
    down = ["AttnDownBlock2D" if s in attention else "DownBlock2D" for s in sizes]
    up = ["AttnUpBlock2D" if s in attention else "UpBlock2D" for s in reversed(sizes)]
    return down, up


def build_unet(config: dict) -> nn.Module:
    """A diffusers UNet2DModel from plain keyword arguments."""
    from diffusers import UNet2DModel  # heavy: imported on use

    try:
        return UNet2DModel(**config)
    except (TypeError, ValueError) as e:
        raise ModelError(f"invalid UNet configuration ({str(e).splitlines()[0][:200]})") from None


def identity_norm(channels: int) -> dict:
    """Per-channel (shift, scale) pairs that leave latents as they are (published checkpoints)."""
    return {"cond_shift": [0.0] * channels, "cond_scale": [1.0] * channels,
            "target_shift": [0.0] * channels, "target_scale": [1.0] * channels}


class SRDenoiser(nn.Module):
    """UNet plus how to call it: objective, timestep convention, training step count, how the
    condition is made (``conditioning``), whether it predicts the residual over the condition and
    the per-channel latent shift/scale measured on the training latents.

    ``forward(z, cond, t)`` works in the model's normalised space (``normalize_condition``,
    ``to_target``, ``from_target`` map to and from latents) and takes DDPM-convention timesteps
    (integers, 0 = cleanest) for diffusion objectives and times in [0, 1] (1 = data) for flow; the
    model sees them in its own convention.
    """

    def __init__(self, unet_kwargs: dict, objective: str = "x0", convention: str = "ddpm",
                 train_steps: int = TRAIN_STEPS, card: dict | None = None,
                 conditioning: str = "latent", residual: bool = False,
                 latent_norm: dict | None = None):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ModelError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if convention not in CONVENTIONS:
            raise ModelError(f"timestep convention must be one of {CONVENTIONS}, got {convention!r}")
        if conditioning not in CONDITIONINGS:
            raise ModelError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        self.unet = build_unet(unet_kwargs)
        self.unet_kwargs = dict(unet_kwargs)
        self.objective = objective
        self.convention = convention
        self.train_steps = int(train_steps)
        self.conditioning = conditioning
        self.residual = bool(residual)
        self.latent_norm = {k: [float(x) for x in v] for k, v in
                            (latent_norm or identity_norm(self.latent_channels)).items()}
        if any(len(v) != self.latent_channels for v in self.latent_norm.values()):
            raise ModelError(f"latent_norm needs {self.latent_channels} values per entry")
        self.card = dict(card or {})
        self.latent_sr_alphas: torch.Tensor | None = None  # a published checkpoint's own table
        self.weights_path: str | None = None

    def _stat(self, key: str, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.latent_norm[key], dtype=like.dtype, device=like.device
                            ).reshape(1, -1, 1, 1)

    def normalize_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Condition latent -> the UNet's condition channels (per-channel standardised)."""
        return (cond - self._stat("cond_shift", cond)) / self._stat("cond_scale", cond)

    def to_target(self, z_hr: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """HR latent -> what the diffusion generates (the residual over ``cond`` if residual)."""
        x = z_hr - cond.to(z_hr) if self.residual else z_hr
        return (x - self._stat("target_shift", x)) / self._stat("target_scale", x)

    def from_target(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Inverse of ``to_target``: a generated sample -> HR latent."""
        z = x * self._stat("target_scale", x) + self._stat("target_shift", x)
        return z + cond.to(z) if self.residual else z

    @property
    def latent_channels(self) -> int:
        return int(self.unet_kwargs["out_channels"])

    @property
    def multiple(self) -> int:
        """Latent sides must be a multiple of this (one halving per level but the last)."""
        return 2 ** (len(self.unet_kwargs["block_out_channels"]) - 1)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The integer timestep the UNet was trained with for our time ``t``."""
        t = torch.as_tensor(t)
        if self.objective == "flow":
            return (t.double() * (self.train_steps - 1)).floor().long()
        t = t.round().long()
        return self.train_steps - 1 - t if self.convention == "flipped" else t

    def forward(self, z: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = self.model_timestep(t).to(z.device).expand(z.shape[0])
        return self.unet(torch.cat([z, cond.to(z.dtype)], dim=1), timestep).sample

    def sr_config(self) -> dict:
        return {"unet": self.unet_kwargs, "objective": self.objective,
                "convention": self.convention, "train_steps": self.train_steps,
                "conditioning": self.conditioning, "residual": self.residual,
                "latent_norm": self.latent_norm}


def denoiser_from_config(config: dict, card: dict | None = None) -> SRDenoiser:
    """An SRDenoiser from its ``sr_config`` (older files without the new keys load as latent-sr:
    latent conditioning, no residual, identity normalisation)."""
    return SRDenoiser(config["unet"], config["objective"], config["convention"],
                      config["train_steps"], card, config.get("conditioning", "latent"),
                      config.get("residual", False), config.get("latent_norm"))


SR_CONFIG_FILE = "sr_config.json"
CARD_FILE = "model_card.json"
FOLDER_WEIGHTS = "diffusion_pytorch_model.safetensors"


def save_sr_model(model: SRDenoiser, path: str | Path, card: dict | None = None,
                  half: bool = False) -> Path:
    """Write the UNet weights as safetensors with the SR config and card in the header
    (``half``: fp16 storage, loaded back into fp32); a path without the .safetensors suffix is
    written as a diffusers folder (``save_sr_folder``)."""
    if Path(path).suffix != ".safetensors":
        return save_sr_folder(model, path, card)
    tensors = {k: v.detach().to("cpu", torch.float16 if half and v.is_floating_point() else None)
               .contiguous() for k, v in model.unet.state_dict().items()}
    meta = {"sr_config": json.dumps(model.sr_config()),
            "card": json.dumps(card if card is not None else model.card)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return Path(path)


def save_sr_folder(model: SRDenoiser, folder: str | Path, card: dict | None = None) -> Path:
    """A diffusers folder: ``UNet2DModel.save_pretrained`` (config.json + safetensors weights)
    plus our sr_config.json (objective, timesteps, conditioning, residual, latent shift/scale)
    and model_card.json; written beside, then moved into place."""

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.unet.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / SR_CONFIG_FILE).write_text(json.dumps(model.sr_config(), indent=2))
        (tmp / CARD_FILE).write_text(json.dumps(card if card is not None else model.card,
                                                indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def load_sr_folder(folder: Path) -> SRDenoiser:
    """An SR model from a diffusers folder written by ``save_sr_folder``."""

    try:
        config = json.loads((folder / SR_CONFIG_FILE).read_text())
        card = json.loads((folder / CARD_FILE).read_text()) if (folder / CARD_FILE).is_file() \
            else {}
        sd = load_file(str(folder / FOLDER_WEIGHTS))
    except FileNotFoundError as e:
        raise ModelError(f"{folder}: not an SR model folder (missing {Path(e.filename).name})"
                         ) from None
    except Exception as e:
        raise ModelError(f"{folder}: unreadable SR model folder ({str(e)[:160]})") from None
    model = denoiser_from_config(config, card)
    load_unet_weights(model, sd, str(folder))
    return model


def load_sr_model(name_or_path: str | Path, device: str = "cpu") -> SRDenoiser:
    """An SR model in eval mode: a shipped name (``starter_sr_x4``), our safetensors, our
    diffusers folder, or a published latent-sr Lightning checkpoint."""

    spec = SR_MODELS.get(str(name_or_path))
    path = spec.local_path() if spec else Path(name_or_path).expanduser()
    if not spec and path.is_dir():
        model = load_sr_folder(path)
        model.weights_path = str(path)
        return model.to(device).eval()
    if not path.is_file():
        what = f"the weights of {spec.name} are missing (run 'make starter-weights')" if spec \
            else "SR model file not found"
        raise ModelError(f"{path}: {what}")
    if spec and spec.sha256 and file_sha256(path) != spec.sha256:
        raise ModelError(f"{path}: checksum differs from the expected one for {spec.name}")
    if path.suffix != ".safetensors":
        from .compat import load_latent_sr_checkpoint  # compat builds SRDenoiser: a cycle at the top
        model = load_latent_sr_checkpoint(path)
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ModelError(f"{path}: not a readable safetensors file ({str(e)[:160]})") from None
        if "sr_config" not in meta:
            raise ModelError(f"{path}: not an SR model (no sr_config in the header)")
        config = json.loads(meta["sr_config"])
        model = denoiser_from_config(config, json.loads(meta.get("card", "{}")))
        load_unet_weights(model, sd, str(path))
    model.weights_path = str(path)
    return model.to(device).eval()


def load_unet_weights(model: SRDenoiser, sd: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line ModelError naming what does not match."""

    load_strict(model.unet, sd, source)
