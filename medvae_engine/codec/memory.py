"""How much memory a 3D window needs, and the largest window that fits the memory there is.

The memory model (``medvae bench memory``; docs/benchmarks.md, "3D memory"): the peak of one window
above the loaded model is

    peak = FIXED_BYTES + PARAM_BYTES[precision] * parameters + PER_VOXEL[stage, precision] * ch * voxels

with ``ch`` the base width and ``voxels`` the window's image voxels. The slope is what the
full-resolution ResnetBlocks hold at once: input, GroupNorm output, sigmoid and swish, four maps of
``ch`` channels in the encoder (16 bytes per voxel per ch in fp32) and four of ``2 ch`` after the
decoder's last upsampling (32). Measured with the official 3D architecture (ch 128), bytes per
voxel per ch: fp32 encode 17.9 (windows 24^3..48^3), 18.9 (132^3) and 19.6 (128^3 whole), decode
34 (small windows) and 32 (128^3); bf16 encode about 9 and decode 15-16 at 120^3..128^3 (more at
small windows, where the fixed terms dominate). bf16 saves less than half: GroupNorm and swish run in
fp32 under autocast. The mid-block attention runs on 1/f^3 of the voxels in query blocks of at most
256 MB and stays below the linear term. The codec holds the volume and its blending buffers besides
(``volume_buffer_bytes``), and a window is chosen so that its prediction times ``SAFETY`` fits.
"""

from __future__ import annotations

import math
import re

import psutil
import torch

from ..errors import InputError

# Peak bytes per window voxel per unit of base width, above the loaded model (see the docstring).
PER_VOXEL = {
    ("encode", "fp32"): 20.0,
    ("decode", "fp32"): 34.0,
    ("encode", "bf16"): 12.0,
    ("decode", "bf16"): 20.0,
    # encoding with latent refinement (codec/refine.py): the decoder's activations kept for the
    # backward pass; the starter 3D model at 48^3-64^3 windows measured 211-255 (fp32), 104-106 (bf16)
    ("refine", "fp32"): 230.0,
    ("refine", "bf16"): 110.0,
}
FIXED_BYTES = 100 * 2**20  # oneDNN scratch, allocator slack: 40-90 MB measured
# Bytes per parameter while a window runs (bf16 autocast's weight copies: 150-210 MB measured for
# the official 3D architecture's 161M parameters).
PARAM_BYTES = {"fp32": 0.0, "bf16": 1.0}
SAFETY = 1.25  # the predicted window peak times this must fit the budget
AVAILABLE_FRACTION = 0.8  # the automatic choice uses this much of the memory available now
MIN_ROI = 32  # the smallest window chosen automatically, even when the budget is smaller
MAX_ROI = 160  # the largest: attention cost grows with the square of the window's voxels
VOLUME_COPIES = {"encode": 3, "refine": 3, "decode": 5}  # float32 volume-sized arrays the codec holds

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str, flag: str = "--max-memory") -> int:
    """A memory size like ``8G``, ``512M``, ``1.5GB`` or ``8GiB`` (powers of 1024) in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    value = float(match.group(1)) * _UNITS[match.group(2).upper()] if match else 0.0
    if not match or value < 1:
        raise InputError(f"{flag}: {text!r} is not a memory size (e.g. 8G, 512M, 2048M)")
    return int(value)


def predict_window_peak(config: dict, params: int, side: int | tuple[int, ...], precision: str,
                        stage: str) -> float:
    """Predicted peak bytes of one window (image voxels) of ``stage`` above the loaded model."""
    shape = (side,) * 3 if isinstance(side, int) else side
    voxels = math.prod(shape)
    key = (stage, "bf16" if precision == "fp16" else precision)
    return FIXED_BYTES + PARAM_BYTES[key[1]] * params + PER_VOXEL[key] * config["ch"] * voxels


def volume_buffer_bytes(voxels: int, stage: str) -> float:
    """Bytes of the volume-sized arrays the codec holds besides the window (input, normalised and
    padded copies; blending accumulators)."""
    return VOLUME_COPIES[stage] * 4.0 * voxels


def process_rss() -> int:
    """Resident memory of this process now, in bytes."""
    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, which starts afresh at exec (getrusage's
    ru_maxrss keeps the high-water mark of the parent at fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # POSIX only: the fallback where /proc is missing

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def window_budget(device: torch.device, max_memory: int | None, voxels: int, stage: str) -> float:
    """Bytes one window may take: ``max_memory`` minus what the process holds now (on the CPU), or
    AVAILABLE_FRACTION of the memory available now (the device's free memory on CUDA), minus the
    volume buffers still to come."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        used = torch.cuda.memory_allocated(device)
        budget = max_memory - used if max_memory else AVAILABLE_FRACTION * free
        return budget  # volume buffers stay on the host
    if max_memory:
        budget = max_memory - process_rss()
    else:
        budget = AVAILABLE_FRACTION * psutil.virtual_memory().available
    return budget - volume_buffer_bytes(voxels, stage)


def choose_roi(model, options, shape: tuple[int, ...], stage: str) -> int:
    """The 3D window side (image voxels) for ``stage`` over a padded image ``shape``: the options'
    ROI when given, else the largest multiple of the model's factor between MIN_ROI and MAX_ROI
    whose predicted peak times SAFETY fits the budget (MIN_ROI when none does)."""
    if options.roi:
        return int(options.roi)
    config = getattr(model, "config", None)
    if not config or "ch" not in config:  # baselines and foreign models: no memory model
        return MAX_ROI
    f = int(model.factor)
    params = sum(p.numel() for p in model.parameters())
    device = next(iter(model.parameters())).device
    budget = window_budget(device, options.max_memory, math.prod(shape), stage)
    top = min(MAX_ROI, max(shape)) // f * f
    for side in range(top, MIN_ROI - 1, -f):
        window = tuple(min(side, s) for s in shape)
        if SAFETY * predict_window_peak(config, params, window, options.precision, stage) <= budget:
            return side
    return MIN_ROI
