"""The one front door to every codec: a spec string -> a module with encode/project/decode.

One syntax everywhere (CLI ``-m``, ``analyze --screen``, CAD ``--inputs``, study ``--codec`` and
study.yaml, SR ``--autoencoder``, the plugin's model choice):

- a zoo name (``starter_4_1_2d``), a checkpoint file or a diffusers VAE folder: an autoencoder;
- ``MODE@F``: an interpolation baseline (``bicubic@4``: down by 4 per side, back up by bicubic);
- ``pixels``: the identity codec (factor 1), for SR and CAD on plain images.

``MODE:F`` (the older study and analyze form) is read as ``MODE@F``, and ``image`` (the older CAD
name) as ``pixels``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from pathlib import Path

from torch import nn

from ..errors import ModelError
from ..models.loading import load_model_steps
from ..runtime.progress import Progress, run
from .baselines import BASELINES, PIXELS, PixelCodec, get_baseline

DEFAULT_FACTOR = 4


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    """A parsed codec spec: ``kind`` is model, baseline or pixels."""

    kind: str
    name: str
    factor: int | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.factor}" if self.kind == "baseline" else self.name


def parse_codec(text: str | Path, default_factor: int | None = None) -> CodecSpec:
    """Read a spec; a bare baseline mode takes ``default_factor`` (an error when there is none)."""
    text = str(text)
    if text in (PIXELS, "image"):  # "image": the older CAD name
        return CodecSpec("pixels", PIXELS, 1)
    mode, sep, factor = text.partition("@")
    if not sep and text.count(":") == 1 and text.partition(":")[0] in BASELINES:
        mode, sep, factor = text.partition(":")
    if mode not in BASELINES:
        return CodecSpec("model", text)
    if not sep:
        if default_factor is None:
            raise ModelError(f"baseline {text!r} needs a factor, e.g. {mode}@{DEFAULT_FACTOR}")
        factor = str(default_factor)
    if not factor.isdigit() or int(factor) < 2:
        raise ModelError(f"baseline {text!r}: the factor after '@' must be an integer >= 2")
    return CodecSpec("baseline", mode, int(factor))


def baseline_dims(mode: str, spatial_dims: int | None) -> int:
    """The baseline's dimension: the image's when the mode has one, else the mode's first."""
    dims = BASELINES[mode]
    return spatial_dims if spatial_dims in dims else dims[0]


def load_codec(spec: str | Path | CodecSpec, **kw) -> nn.Module:
    """The codec a spec names (see ``load_codec_steps`` for the keywords)."""
    return run(load_codec_steps(spec, **kw))


def load_codec_steps(
    spec: str | Path | CodecSpec,
    *,
    spatial_dims: int | None = None,
    default_factor: int | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    trust_checkpoint: bool = False,
) -> Generator[Progress, None, nn.Module]:
    """Load a codec as steps (a GUI job can cancel between reading and building weights).

    ``spatial_dims`` picks a baseline's dimension (``nearest`` exists in 2D and 3D);
    ``weights`` replaces a zoo model's cached weights file.
    """
    parsed = spec if isinstance(spec, CodecSpec) else parse_codec(spec, default_factor)
    if parsed.kind == "pixels":
        return PixelCodec(spatial_dims or 2).to(device)
    if parsed.kind == "baseline":
        return get_baseline(parsed.name, baseline_dims(parsed.name, spatial_dims), parsed.factor)
    return (yield from load_model_steps(parsed.name, weights=weights, device=device,
                                        trust_checkpoint=trust_checkpoint))
