"""Autoencoder architecture, LoRA, checkpoints and the model zoo."""

from .autoencoder import AutoencoderKL
from .checkpoints import infer_config, inflate_state_dict, read_state_dict, save_model
from .loading import load_model, weights_sha256
from .lora import inject_lora, merge_lora, merge_lora_state_dict
from .zoo import MODELS, SR_MODELS, ModelSpec, get_spec, list_models, list_sr_models

__all__ = [
    "MODELS",
    "SR_MODELS",
    "AutoencoderKL",
    "ModelSpec",
    "get_spec",
    "infer_config",
    "inflate_state_dict",
    "inject_lora",
    "list_models",
    "list_sr_models",
    "load_model",
    "merge_lora",
    "merge_lora_state_dict",
    "read_state_dict",
    "save_model",
    "weights_sha256",
]
