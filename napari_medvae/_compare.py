"""Compare layout as plain data: which layers fill which grid panel, in what layer order.

napari's grid puts ``stride`` consecutive layers (bottom first) into each viewbox and skips
viewboxes whose layers are all hidden, so a panel with an overlay is the pair (base, overlay) at
stride 2; panels without one are paired with a hidden layer the comparison does not use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psygnal import evented

from ._layers import layer_kind

LAYOUTS = {2: (1, 2), 3: (1, 3), 4: (2, 2)}
PANEL_ROLES = ("image", "reconstruction", "sr", "map")


@evented
@dataclass
class CompareState:
    """Panels as (base, overlay or '') pairs, grid on/off and linked contrast."""

    panels: list = field(default_factory=list)
    enabled: bool = False
    link_contrast: bool = False


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
