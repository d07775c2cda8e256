"""View: axial / coronal / sagittal, reading-window presets and the window link, with their keys.

The state lives in the viewer's `RadiologicalDisplay` (`_display`); this panel only shows it.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton

from .._display import LINK_KEY, PRESET_KEYS, PRESETS, VIEW_KEYS
from .._radiology import CT_PRESETS, VIEWS
from ._common import WIDGET_WIDTH, medvae_panel, wrapped


def preset_caption(preset: str) -> str:
    """'CT brain W 80 / L 40 HU (Alt-1)' style captions of the preset choices."""
    if preset in CT_PRESETS:
        width, level = CT_PRESETS[preset]
        return f"CT {preset} W {width:g} / L {level:g} HU ({PRESET_KEYS[preset]})"
    return f"MR/other: {preset} ({PRESET_KEYS[preset]})"


class ViewWidget(Container):
    """Docked view panel of the radiological display."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        self.display = medvae_panel(self, napari_viewer)
        state = self.display.state
        self.view_buttons = {view: PushButton(text=f"{view.capitalize()} ({VIEW_KEYS[view]})")
                             for view in VIEWS}
        self.preset = ComboBox(label="window", value=state.preset or PRESETS[0],
                               choices=[(preset_caption(p), p) for p in PRESETS])
        self.apply_button = PushButton(text="Apply window")
        self.link = CheckBox(text=f"link windows of compared images ({LINK_KEY})",
                             value=state.link_window)
        self.help = wrapped(Label(value="Display only: windows and views never change the data, "
                                  "saved files or computed results. Patient right is on screen "
                                  "left; letters mark the canvas edges; the scale bar is in mm."))
        self.extend([*self.view_buttons.values(), self.preset, self.apply_button, self.link,
                     self.help])
        for view, button in self.view_buttons.items():
            button.changed.connect(lambda _=None, v=view: self.display.set_view(v))
        self.apply_button.changed.connect(lambda: self.display.apply_preset(self.preset.value))
        self.link.changed.connect(lambda value: setattr(state, "link_window", bool(value)))
        state.events.link_window.connect(self._show_link)
        state.events.preset.connect(self._show_preset)

    def _show_link(self, value: bool) -> None:
        with self.link.changed.blocked():
            self.link.value = bool(value)

    def _show_preset(self, preset: str) -> None:
        if preset in PRESETS:
            self.preset.value = preset
