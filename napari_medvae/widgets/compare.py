"""Compare: chosen layers side by side in napari's grid (one camera, one slice), optional linked
contrast limits, one-click 2/3/4 panel layouts and screenshot export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from .._compare import LAYOUTS, CompareState, plan_grid, suggest_panels
from .._layers import META_KEY
from ._common import NONE, WIDGET_WIDTH, grid_of, layers_of

MAX_PANELS = 4


class CompareWidget(Container):
    """Docked compare panel; the layout lives in `CompareState`."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        self.state = CompareState()
        self._linked: list = []
        self.bases = [ComboBox(label=f"panel {i + 1}", choices=self._choices) for i in range(MAX_PANELS)]
        self.overlays = [ComboBox(label=f"  overlay {i + 1}", choices=self._choices)
                         for i in range(MAX_PANELS)]
        self.layout_buttons = {n: PushButton(text=f"{n} panels") for n in LAYOUTS}
        self.off_button = PushButton(text="Grid off")
        self.link = CheckBox(text="link contrast limits", value=False)
        self.path = FileEdit(label="screenshot", mode="w", filter="*.png", value="compare.png")
        self.shot_button = PushButton(text="Save screenshot")
        for base, overlay in zip(self.bases, self.overlays, strict=True):
            self.extend([base, overlay])
        self.extend([*self.layout_buttons.values(), self.off_button, self.link, self.path,
                     self.shot_button])
        for n, button in self.layout_buttons.items():
            button.changed.connect(lambda _=None, n=n: self.apply(n))
        self.off_button.changed.connect(self.grid_off)
        self.link.changed.connect(lambda v: setattr(self.state, "link_contrast", bool(v)))
        self.shot_button.changed.connect(lambda: self.screenshot(self.path.value))
        self.state.events.link_contrast.connect(self._relink)
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def _choices(self, _widget=None) -> list[str]:
        return [NONE, *layers_of(self.viewer)]

    def panels_from_widgets(self, n: int) -> list[tuple[str, str]]:
        """The first ``n`` chosen panels; suggestions fill the grid when nothing is chosen."""
        chosen = [(b.value, "" if o.value in (None, NONE) else o.value)
                  for b, o in zip(self.bases[:n], self.overlays[:n], strict=True)
                  if b.value not in (None, NONE)]
        return chosen or suggest_panels(self.viewer.layers, n)

    def apply(self, n: int, panels: list[tuple[str, str]] | None = None) -> None:
        """Show ``panels`` (default: the widget's choice) in an n-panel grid with one camera."""
        panels = panels if panels is not None else self.panels_from_widgets(n)
        if not panels:
            show_error("no layers to compare: open an image and reconstruct it first")
            return
        names = [layer.name for layer in self.viewer.layers]
        missing = [name for pair in panels for name in pair if name and name not in names]
        if missing:
            show_error(f"compare: no layer named {missing[0]!r}")
            return
        plan = plan_grid(panels, names)
        order = [name or self._spacer(i, panels[0][0]) for i, name in enumerate(plan.order)]
        for target, name in enumerate(order):
            self.viewer.layers.move(self.viewer.layers.index(name), target)
        for layer in self.viewer.layers:
            layer.visible = layer.name in plan.visible
        grid = grid_of(self.viewer)
        grid.stride, grid.shape, grid.enabled = plan.stride, LAYOUTS[n], True
        self.state.panels, self.state.enabled = list(panels), True
        self._show_panels(panels)
        self._relink(self.state.link_contrast)
        self.viewer.reset_view()

    def _show_panels(self, panels: list[tuple[str, str]]) -> None:
        """Reflect the applied panels in the combo boxes."""
        self.reset_choices()
        for i, (base, overlay) in enumerate(panels):
            self.bases[i].value, self.overlays[i].value = base, overlay or NONE
        for base, overlay in zip(self.bases[len(panels):], self.overlays[len(panels):], strict=True):
            base.value = overlay.value = NONE

    def _spacer(self, index: int, like: str) -> str:
        """A hidden one-voxel layer that keeps a panel without overlay at stride 2."""
        ref = self.viewer.layers[like]
        name = f"compare spacer {index}"
        if name not in self.viewer.layers:
            self.viewer.add_image(np.zeros((1,) * ref.ndim, np.float32), name=name, visible=False,
                                  scale=ref.scale, translate=ref.translate,
                                  metadata={META_KEY: {"kind": "spacer"}})
        return name

    def grid_off(self) -> None:
        """Back to one canvas; every layer visible again."""
        grid_of(self.viewer).enabled = False
        self.state.enabled = False
        for layer in self.viewer.layers:
            layer.visible = layer.metadata.get(META_KEY, {}).get("kind") != "spacer"

    def _relink(self, on: bool) -> None:
        for layer, callback in self._linked:
            layer.events.contrast_limits.disconnect(callback)
        self._linked = []
        if not on:
            return
        layers = [self.viewer.layers[base] for base, _ in self.state.panels
                  if base in self.viewer.layers]
        layers = [layer for layer in layers if isinstance(layer, Image)
                  and layer.metadata.get(META_KEY, {}).get("kind") in (None, "image", "reconstruction",
                                                                      "sr", "preview")]
        if not layers:
            return
        for layer in layers[1:]:
            layer.contrast_limits = layers[0].contrast_limits

        def follow(source):
            def callback(_event=None):
                for other in layers:
                    if other is not source and other.contrast_limits != source.contrast_limits:
                        other.contrast_limits = source.contrast_limits
            return callback

        for layer in layers:
            callback = follow(layer)
            layer.events.contrast_limits.connect(callback)
            self._linked.append((layer, callback))

    def screenshot(self, path) -> Path | None:
        """Save the canvas (the whole grid) as PNG."""
        path = Path(path)
        try:
            self.viewer.screenshot(path=str(path), canvas_only=True)
        except (OSError, RuntimeError) as e:
            show_error(f"{path}: screenshot failed ({e})")
            return None
        show_info(f"screenshot saved to {path}")
        return path
