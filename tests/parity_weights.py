"""Deterministic weights for the parity fixtures, rebuilt from key names: no weights committed.

Shared by ``scripts/make_parity_fixtures.py`` (official code) and ``tests/test_parity.py`` (ours).
Numpy only. Every tensor is drawn from the PCG64 bit stream seeded with the CRC32 of its key; raw
bit-generator streams are stable across numpy versions, unlike the Generator's distributions.
Scales keep activations O(1): conv weights fan-in scaled, GroupNorm weights near 1, biases small,
LoRA ``lora_up`` non-zero so the low-rank update visibly changes the output.
"""

from __future__ import annotations

import zlib

import numpy as np

BIAS_SCALE = 0.05
NORM_SCALE = 0.1
LORA_UP_GAIN = 0.5


def unit_uniform(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance uniform values for ``key``, reproducible on any platform."""
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.random.PCG64(zlib.crc32(key.encode())).random_raw(count)
    unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    return ((unit * 2.0 - 1.0) * np.sqrt(3.0)).reshape(shape)


def make_tensor(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 value of one state-dict entry, chosen by its name and shape."""
    values = unit_uniform(key, shape)
    if key.endswith(".bias"):
        values = BIAS_SCALE * values
    elif len(shape) == 1:  # GroupNorm weight
        values = 1.0 + NORM_SCALE * values
    else:
        fan_in = int(np.prod(shape[1:]))
        gain = LORA_UP_GAIN if key.endswith("lora_up.weight") else 1.0
        values = gain * values / np.sqrt(fan_in)
    return values.astype(np.float32)


def make_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A full state dict ``{key: array}`` for the given ``{key: shape}``, in the same key order."""
    return {key: make_tensor(key, tuple(shape)) for key, shape in shapes.items()}
