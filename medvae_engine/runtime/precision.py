"""Numeric precision: autocast contexts and the fastest precision a device computes natively."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_device(model) -> torch.device:
    """The device of a module's first parameter (CPU for parameter-free modules)."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def fast_precision(device: str = "cpu") -> str:
    """bf16 where the hardware computes it natively (CPUs with AVX-512 BF16/AMX, recent GPUs),
    else fp32: about 2x faster than fp32 on such CPUs, outputs within 46-48 dB PSNR of fp32
    (docs/benchmarks.md)."""
    if str(device).startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if str(device) != "cpu":
        return "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast(where: torch.nn.Module | torch.device, precision: str):
    """Autocast context for bf16/fp16 on the device of ``where`` (a module or a device), nothing
    for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    device = where if isinstance(where, torch.device) else model_device(where)
    return torch.autocast(device.type, dtype=dtype)
