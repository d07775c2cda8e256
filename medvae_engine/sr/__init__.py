"""Latent-diffusion super-resolution: conditional UNet, schedules, samplers, pipeline, training."""

from .pipeline import SROptions, super_resolve, super_resolve_steps
from .unet import SRDenoiser, load_sr_model, save_sr_model, unet_config

__all__ = [
    "SRDenoiser",
    "SROptions",
    "load_sr_model",
    "save_sr_model",
    "super_resolve",
    "super_resolve_steps",
    "unet_config",
]
