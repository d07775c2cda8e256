"""Per-viewer session: the chosen model (evented state the Model widget shows) and the loaded module.

Kept free of Qt so the model choice, summary and loading are testable without a viewer.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
from psygnal import evented

from medvae_engine.codec.baselines import BASELINES
from medvae_engine.codec.memory import choose_roi, predict_window_peak, volume_buffer_bytes
from medvae_engine.codec.pipeline import CodecOptions
from medvae_engine.codec.spec import DEFAULT_FACTOR, load_codec_steps, parse_codec
from medvae_engine.errors import ModelError
from medvae_engine.models import MODELS, list_models
from medvae_engine.runtime.precision import fast_precision
from medvae_engine.runtime.progress import Progress, run

CUSTOM = "custom checkpoint"
SHOWN_BASELINES = ("bicubic", "trilinear")  # the 2D and the 3D interpolation baseline
NOT_AVAILABLE = "not on this machine"


@evented
@dataclass
class ModelState:
    """The user's model choice and what the panel shows about it."""

    choice: str = ""
    checkpoint: str = ""
    device: str = "cpu"
    precision: str = field(default_factory=fast_precision)  # bf16 if native
    loaded: str = ""
    summary: str = ""


def model_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: zoo models (marked when weights are missing), baselines, custom."""
    choices = []
    for record in list_models():
        tag = "" if record["available"] else f" ({NOT_AVAILABLE})"
        label = f"{record['name']}: {record['source']}, f={record['factor']}{tag}"
        choices.append((label, record["name"]))
    for mode in SHOWN_BASELINES:
        choices.append((f"{mode} baseline ({BASELINES[mode][0]}D, f={DEFAULT_FACTOR})",
                        f"{mode}@{DEFAULT_FACTOR}"))
    choices.append((CUSTOM, CUSTOM))
    return choices


def default_choice() -> str:
    """The first available starter, else the bicubic baseline (clearly labelled as such)."""
    for record in list_models():
        if record["source"] == "starter" and record["available"] and record["spatial_dims"] == 2:
            return record["name"]
    return f"bicubic@{DEFAULT_FACTOR}"


def is_baseline(choice: str) -> bool:
    """Whether a model choice names an interpolation baseline (no weights, no checkpoint)."""
    return choice != CUSTOM and parse_codec(choice).kind == "baseline"


def build_model(state: ModelState):
    """Load the chosen model; ModelError (a notification in the GUI) when it cannot be had."""
    return run(build_model_steps(state))


def build_model_steps(state: ModelState) -> Generator[Progress, None, object]:
    """``build_model`` as steps, so a job loads the weights in its worker and can cancel.

    ``checkpoint`` is the custom checkpoint, or for a named model an optional weights file that
    replaces the cache lookup.
    """
    choice = state.choice or default_choice()
    if choice == CUSTOM:
        if not state.checkpoint:
            raise ModelError("choose a checkpoint file for the custom model")
        return (yield from load_codec_steps(state.checkpoint, device=state.device))
    weights = None if is_baseline(choice) else state.checkpoint or None
    return (yield from load_codec_steps(choice, weights=weights, device=state.device))


def weights_status(choice: str) -> str:
    """Where the weights of a zoo model are ("" for baselines and custom checkpoints)."""
    spec = MODELS.get(choice)
    if spec is None:
        return ""
    if spec.source == "starter":
        return "weights: shipped with the package" if spec.available else (
            f"weights: {NOT_AVAILABLE} ({spec.local_path()} missing)")
    if spec.available:
        return f"weights: on this machine ({spec.local_path()})"
    return (f"weights: {NOT_AVAILABLE} ({spec.filename}); Download it or open a copy with "
            "'Open weights file...'")


def summarize(model, image_shape: tuple[int, ...] | None, axis: int | None = None,
              precision: str = "fp32") -> str:
    """Factor, latent shape, compression ratio and a memory estimate for ``image_shape``: for 3D
    models the codec's own window choice and memory model, else a rough estimate."""
    f = int(model.factor)
    c = int(model.latent_channels)
    lines = [f"{getattr(model, 'name', 'model')}: {model.spatial_dims}D, factor {f}, {c} latent ch"]
    if image_shape is None:
        return "\n".join(lines)
    spatial = _latent_spatial(image_shape, f, model.spatial_dims, axis)
    latent_values = c * int(np.prod(spatial))
    ratio = float(np.prod(image_shape)) / latent_values
    params = sum(p.numel() for p in model.parameters())
    width = int(getattr(model, "config", {}).get("ch", 1))
    if model.spatial_dims == 3 and len(image_shape) == 3 and "ch" in getattr(model, "config", {}):
        padded = tuple(-(-s // f) * f for s in image_shape)
        roi = choose_roi(model, CodecOptions(precision=precision), padded, "decode")
        window = tuple(min(roi, s) for s in padded)
        peak = (params * 4 + volume_buffer_bytes(int(np.prod(padded)), "decode")
                + predict_window_peak(model.config, params, window, precision, "decode"))
        run = "whole" if window == padded else f"in {roi}^3 windows (sized to the free memory)"
        return "\n".join(lines + [
            f"latent shape ({c}, {', '.join(map(str, spatial))})",
            f"compression {ratio:.0f}x ({latent_values} values)",
            f"runs {run}; memory ~{peak / 2**20:.0f} MB above the viewer ({precision})",
        ])
    plane = int(np.prod(image_shape[-2:]))
    activations = 8 * width * plane * 4 * 4  # batch 8, ~4 live feature maps of the first level
    total = params * 4 + activations + 2 * 4 * int(np.prod(image_shape)) + 4 * latent_values
    lines += [
        f"latent shape ({c}, {', '.join(map(str, spatial))})",
        f"compression {ratio:.0f}x ({latent_values} values)",
        f"memory ~{total / 2**20:.0f} MB (rough estimate)",
    ]
    return "\n".join(lines)


def _latent_spatial(shape, f, spatial_dims, axis) -> tuple[int, ...]:
    if spatial_dims == 2 and len(shape) == 3:
        axis = len(shape) - 1 if axis is None else axis
        return tuple(s if i == axis else -(-s // f) for i, s in enumerate(shape))
    return tuple(-(-s // f) for s in shape)


class Session:
    """The model state of one viewer and the module loaded for it."""

    def __init__(self) -> None:
        self.state = ModelState(choice=default_choice())
        self.model = None
        self._generation = 0  # counts choice changes, so a late load never installs a stale model
        self._load_lock = threading.Lock()
        self.state.events.connect(self._forget_on_change)

    def _forget_on_change(self, info) -> None:
        if info.signal.name in ("choice", "checkpoint", "device"):
            self._generation += 1
            self.model = None
            self.state.loaded = ""

    def ensure_model(self):
        """The loaded model, loading the current choice if needed (ModelError when impossible).

        Loads in the calling thread: widgets use ``model_steps`` inside their jobs instead.
        """
        model = run(self.model_steps())
        self.state.loaded = getattr(model, "name", self.state.choice)
        return model

    def model_steps(self) -> Generator[Progress, None, object]:
        """Steps giving the session's model, loading it where they run (a job's worker thread).

        Jobs that need the model at the same time load it once (the second waits for the first).
        """
        with self._load_lock:
            if self.model is not None:
                return self.model
            generation = self._generation
            model = yield from build_model_steps(self.state)
            if generation == self._generation:
                self.adopt(model)
            return model

    def adopt(self, model) -> None:
        """Use ``model`` (loaded elsewhere) for the current choice; no events (any thread)."""
        self.model = model


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_session(viewer) -> Session:
    """The session shared by every medvae widget docked in ``viewer``."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = Session()
    return session
