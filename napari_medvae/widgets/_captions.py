"""Captions drawn on a layer's own grid panel (so they are in exported screenshots too).

napari 0.9 draws a layer's name on its panel (`LayerNameOverlay`); a caption is the same overlay
with its own text. Registering its visual uses napari's private overlay table: kept to this module.
"""

from __future__ import annotations

from napari._vispy.overlays.text import VispyLayerNameOverlay
from napari._vispy.utils.visual import overlay_to_visual
from napari.components.overlays import LayerNameOverlay

CAPTION_KEY = "medvae_caption"


class CaptionOverlay(LayerNameOverlay):
    """A caption in the top-left corner of the panel that shows the layer."""

    text: str = ""


class VispyCaptionOverlay(VispyLayerNameOverlay):
    """Draws `CaptionOverlay.text` instead of the layer's name."""

    def _connect_events(self) -> None:
        self.overlay.events.text.connect(self._on_text_change)

    def _on_text_change(self) -> None:
        self.node.text = self.overlay.text
        self._on_position_change()


overlay_to_visual.setdefault(CaptionOverlay, VispyCaptionOverlay)


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
