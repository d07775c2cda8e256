"""Captions drawn on a layer's own grid panel (so they are in exported screenshots too).

napari 0.9 draws a layer's name on its panel (`LayerNameOverlay`); a caption is the same overlay
with its own text. Registering its visual uses napari's private overlay table: kept to this module.
"""

from __future__ import annotations

import textwrap

from napari._vispy.overlays.text import VispyLayerNameOverlay
from napari._vispy.utils.visual import overlay_to_visual
from napari.components.overlays import LayerNameOverlay

CAPTION_KEY = "medvae_caption"
CAPTION_COLUMNS = 30  # characters per drawn line in a panel's corner
CLEAR_OF_LETTER = 20  # a caption with longer lines starts one line down, below the top letter


class CaptionOverlay(LayerNameOverlay):
    """A caption in the top-left corner of the panel that shows the layer."""

    text: str = ""


class VispyCaptionOverlay(VispyLayerNameOverlay):
    """Draws `CaptionOverlay.text` instead of the layer's name."""

    def _connect_events(self) -> None:
        self.overlay.events.text.connect(self._on_text_change)

    def _on_text_change(self) -> None:
        self.node.text = wrap_caption(self.overlay.text)
        self._on_position_change()


overlay_to_visual.setdefault(CaptionOverlay, VispyCaptionOverlay)


def wrap_caption(text: str, columns: int = CAPTION_COLUMNS) -> str:
    """The caption as drawn: long lines broken at spaces (a map's "(test vs reference)" part on
    lines of its own), starting below the top orientation letter when it would reach it."""
    lines = []
    for line in text.splitlines():
        if len(line) > columns and " (" in line:
            head, tail = line.split(" (", 1)
            lines += [*textwrap.wrap(head, columns), *textwrap.wrap("(" + tail, columns)]
        else:
            lines += textwrap.wrap(line, columns) or [""]
    if max(map(len, lines), default=0) > CLEAR_OF_LETTER:
        lines.insert(0, "")
    return "\n".join(lines)


def set_caption(layer, text: str) -> None:
    """Show ``text`` on the layer's panel ('' hides it)."""
    overlay = layer._overlays.get(CAPTION_KEY)
    if overlay is None:
        layer._overlays[CAPTION_KEY] = CaptionOverlay(text=text, visible=bool(text), font_size=11)
    else:
        overlay.text, overlay.visible = text, bool(text)


def caption_of(layer) -> str:
    """The caption shown on the layer's panel ('' when none)."""
    overlay = layer._overlays.get(CAPTION_KEY)
    return overlay.text if overlay is not None and overlay.visible else ""
