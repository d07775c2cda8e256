"""Compare layout as plain data: which layers fill which grid panel, in what layer order, their
captions and their scores against the first panel.

napari's grid puts ``stride`` consecutive layers (bottom first) into each viewbox and skips
viewboxes whose layers are all hidden, so a panel with an overlay is the pair (base, overlay) at
stride 2; panels without one are paired with a hidden layer the comparison does not use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from psygnal import evented

from medvae_engine.analysis import ms_ssim, psnr, reference_range, ssim, to_unit_range

from ._layers import layer_kind

LAYOUTS = {2: (1, 2), 3: (1, 3), 4: (2, 2)}
PANEL_ROLES = ("image", "reconstruction", "sr", "map")


@evented
@dataclass
class CompareState:
    """Panels as (base, overlay or '') pairs and grid on/off (window links: `_display`)."""

    panels: list = field(default_factory=list)
    enabled: bool = False


@dataclass(frozen=True)
class GridPlan:
    """Layer names bottom to top, the stride, which to show and how many spacers are missing."""

    order: list[str]
    stride: int
    visible: set[str]
    spacers: int


def plan_grid(panels: list[tuple[str, str]], names: list[str]) -> GridPlan:
    """Order ``names`` so that each panel's base (and overlay) share one grid viewbox."""
    used = [n for base, overlay in panels for n in (base, overlay) if n]
    spare = [n for n in names if n not in used]
    stride = 2 if any(overlay for _, overlay in panels) else 1
    order: list[str] = []
    spacers = 0
    for base, overlay in panels:
        order.append(base)
        if stride == 2:
            if overlay:
                order.append(overlay)
            elif spare:
                order.append(spare.pop(0))
            else:
                spacers += 1
                order.append("")
    return GridPlan(order + spare, stride, set(used), spacers)


def suggest_panels(layers, n: int) -> list[tuple[str, str]]:
    """Default panels: original | reconstruction | SR | difference map, hallucination labels over
    the last reconstruction-like panel when they exist."""
    by_kind: dict[str, list[str]] = {}
    for layer in layers:
        by_kind.setdefault(layer_kind(layer) or "image", []).append(layer.name)
    maps = by_kind.get("map", [])
    difference = [m for m in maps if m.startswith("difference")] or maps
    bases = [names[0] for names in (by_kind.get(k, []) for k in PANEL_ROLES[:3]) if names]
    panels = [(name, "") for name in bases + difference[:1]]
    labels = by_kind.get("labels", [])
    if labels and len(bases) > 1:
        index = len(bases) - 1
        panels[index] = (panels[index][0], labels[0])
    return panels[:n]


def encoding_suffix(refine: int, refiner: bool) -> str:
    """', no refiner' and ', refine N' where a reconstruction's encoding left the defaults: one
    wording for its layer name and its compare caption."""
    return (", no refiner" if not refiner else "") + (f", refine {refine}" if refine else "")


def panel_caption(name: str, meta: dict, overlay: str = "") -> str:
    """What a compare panel is, on its canvas: Original / model, precision and refinement / map and
    reference."""
    kind = meta.get("kind")
    if kind == "image":
        caption = f"Original: {name}"
    elif kind in ("reconstruction", "preview"):
        precision = f", {meta['precision']}" if meta.get("precision") else ""
        refine = encoding_suffix(meta.get("refine") or 0, meta.get("refiner") is not False)
        caption = f"Reconstruction: {meta.get('model') or name}{precision}{refine}"
    elif kind == "super-resolution":
        caption = (f"SR x{meta.get('scale', '?')} {meta.get('sampler', '')}: "
                   f"{meta.get('model') or name}")
    else:
        caption = name  # maps are named "<map> [units] (<test> vs <reference>)"
    return caption + (f"\n+ {overlay}" if overlay else "")


def metric_scores(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """PSNR (dB), SSIM and MS-SSIM of two images already mapped to [0, 1]."""
    ms = ms_ssim(reference, test)
    return {"PSNR dB": psnr(reference, test), "SSIM": ssim(reference, test),
            "MS-SSIM": getattr(ms, "value", float("nan"))}


def panel_metrics(reference: np.ndarray, test: np.ndarray, axis: int | None, index: int,
                  volume: bool = True) -> dict[str, dict]:
    """Scores of the slice on screen and (for volumes, when asked) of the whole volume, both images
    mapped to [0, 1] by the reference volume's [min, max] (the engine's convention; not the display
    window)."""
    value_range = reference_range(reference)
    ref, tst = to_unit_range(reference, value_range), to_unit_range(test, value_range)
    if axis is None:
        return {"image": metric_scores(ref, tst)}
    scores = {"slice": metric_scores(np.take(ref, index, axis=axis),
                                     np.take(tst, index, axis=axis))}
    if volume:
        scores["volume"] = metric_scores(ref, tst)
    return scores


def format_metrics(scopes: dict[str, dict]) -> str:
    """One line per scope: 'slice: PSNR 31.20 dB, SSIM 0.912, MS-SSIM 0.950'."""
    lines = []
    for scope, values in scopes.items():
        psnr_db, s, ms = values["PSNR dB"], values["SSIM"], values["MS-SSIM"]
        lines.append(f"{scope}: PSNR {_number(psnr_db)} dB, SSIM {_number(s, 3)}, "
                     f"MS-SSIM {_number(ms, 3)}")
    return "\n".join(lines)


def _number(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"
