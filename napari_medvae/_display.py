"""The viewer side of the radiological display: one `RadiologicalDisplay` per napari viewer.

It shows axial, coronal or sagittal views (patient right on screen left), orientation letters at
the canvas edges of every grid panel, a scale bar in mm, reading windows on keys, window/level
linked across the images, reconstructions and SR results of one modality (unlinked with one
switch), and status-bar readouts in the image's units and mm. Uses napari's models only (no Qt):
the same code runs for the reader, the sample data, every widget's results and the reader study.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
from psygnal import evented

from ._layers import META_KEY
from ._radiology import (
    CT_PRESETS,
    PERCENTILE_PRESET,
    VIEWS,
    map_units,
    opening_preset,
    percentile_limits,
    preset_limits,
    screen_letters,
    units_of,
    view_order,
    window_limits,
)

LETTER_POSITIONS = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left",
                    "right": "middle_right"}
OVERLAY_PREFIX = "medvae_orientation_"
INTENSITY_KINDS = ("image", "reconstruction", "preview", "super-resolution", "reference",
                   "low-resolution", "study")
PRESETS = (*CT_PRESETS, PERCENTILE_PRESET)
VIEW_KEYS = {"axial": "Alt-A", "coronal": "Alt-C", "sagittal": "Alt-S"}
PRESET_KEYS = {"brain": "Alt-1", "subdural": "Alt-2", "abdomen": "Alt-3", "lung": "Alt-4",
               "bone": "Alt-5", PERCENTILE_PRESET: "Alt-0"}
LINK_KEY = "Alt-W"


@evented
@dataclass
class DisplayState:
    """What the View panel shows: the view, the last preset applied and whether windows are linked."""

    view: str = "axial"
    preset: str = ""
    link_window: bool = True


def medvae_meta(layer) -> dict:
    """The plugin's metadata of a layer ({} for layers it did not make)."""
    return layer.metadata.get(META_KEY, {})


def is_intensity(layer) -> bool:
    """An image in physical units (image, reconstruction, SR, ...): not a map, latent or labels."""
    return medvae_meta(layer).get("kind") in INTENSITY_KINDS and layer._type_string == "image"


def window_group(layer) -> tuple[str, bool]:
    """Layers whose windows are linked: same modality, reader-study panes only among themselves."""
    meta = medvae_meta(layer)
    return meta.get("modality", "other"), meta.get("kind") == "study"


def shared_window(volumes) -> list[float]:
    """One opening window for images shown side by side (a reader-study item's panes)."""
    first = volumes[0]
    preset = opening_preset(first.modality, first.metadata)
    if preset in CT_PRESETS:
        return list(window_limits(*CT_PRESETS[preset]))
    return list(percentile_limits(np.concatenate([np.ravel(v.array) for v in volumes])))


class RadiologicalDisplay:
    """Radiological conventions for every layer of one viewer (see the module docstring)."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.state = DisplayState()
        self._linked: list = []
        self._syncing = False
        self._fresh_labels: list = []
        viewer.canvas.overlays.scale_bar.visible = True  # in mm: the unit comes from layer units
        self._add_letter_overlays()
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.layers.events.moved.connect(self._on_layers_changed)
        viewer.layers.selection.events.active.connect(self._on_active)
        viewer.dims.events.order.connect(self.update_letters)
        viewer.dims.events.ndisplay.connect(self.update_letters)
        self.state.events.view.connect(self._apply_view)
        self.state.events.link_window.connect(self.relink)
        self._bind_keys()
        for layer in viewer.layers:
            self._adopt(layer)
        self.relink()
        self._apply_view()

    # -- orientation ------------------------------------------------------------------------------
    def _add_letter_overlays(self) -> None:
        from napari.components.overlays import TextOverlay  # napari starts Qt: imported when a viewer is used

        for edge, position in LETTER_POSITIONS.items():
            self.viewer.canvas.overlays[OVERLAY_PREFIX + edge] = TextOverlay(
                position=position, gridded=True, font_size=14, box=True)

    def letter_overlays(self) -> dict:
        """edge -> the canvas text overlay showing its orientation letter."""
        return {edge: self.viewer.canvas.overlays[OVERLAY_PREFIX + edge] for edge in LETTER_POSITIONS}

    def reference_layer(self):
        """The layer whose voxel axes define the view: the top-most visible one made by medvae."""
        layers = [layer for layer in self.viewer.layers if "ras_axes" in medvae_meta(layer)]
        visible = [layer for layer in layers if layer.visible]
        return (visible or layers or [None])[-1]

    def set_view(self, view: str) -> None:
        """Show the axial, coronal or sagittal view (2D images always show their own plane)."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if self.state.view == view:
            self._apply_view()
        self.state.view = view

    def _apply_view(self, _event=None) -> None:
        layer = self.reference_layer()
        if layer is None:
            self.update_letters()
            return
        axes = medvae_meta(layer)["ras_axes"]
        if len(axes) in (2, 3) and layer.ndim >= len(axes):
            order = view_order(axes, self.state.view, self.viewer.dims.ndim)
            if tuple(self.viewer.dims.order) != order:
                self.viewer.dims.order = order
                self.viewer.reset_view()
        self.update_letters()

    def current_letters(self) -> dict[str, str] | None:
        """edge -> letter for the current view, None when there is nothing oriented to label."""
        layer = self.reference_layer()
        if layer is None or self.viewer.dims.ndisplay != 2 or not medvae_meta(layer).get("oriented"):
            return None
        axes = medvae_meta(layer)["ras_axes"]
        offset = self.viewer.dims.ndim - len(axes)
        row, col = (d - offset for d in self.viewer.dims.order[-2:])
        if min(row, col) < 0:
            return None
        return screen_letters(axes[row], axes[col])

    def update_letters(self, _event=None) -> None:
        """Put the orientation letters of the current view on the canvas edges."""
        letters = self.current_letters()
        for edge, overlay in self.letter_overlays().items():
            overlay.text = letters[edge] if letters else ""
            overlay.visible = letters is not None

    # -- layers -----------------------------------------------------------------------------------
    def _adopt(self, layer) -> None:
        """Per-layer conventions: status readout in units and mm; labels never in a paint mode."""
        if not medvae_meta(layer):
            return
        if layer._type_string == "labels":
            layer.mode = "pan_zoom"
            self._fresh_labels.append(layer)
        elif medvae_meta(layer).get("kind") == "map":
            layer.colorbar.visible = True
        if not getattr(layer, "_medvae_status", False):
            layer.get_status = _status_with_units(layer, layer.get_status)
            layer._medvae_status = True

    def _on_inserted(self, event) -> None:
        layer = event.value
        self._adopt(layer)
        peers = [other for other in self._group(layer) if other is not layer] if (
            self.state.link_window and is_intensity(layer)) else []
        if peers:
            layer.contrast_limits = list(peers[0].contrast_limits)
        elif is_intensity(layer) and medvae_meta(layer).get("window") in PRESETS:
            self.state.preset = medvae_meta(layer)["window"]  # the View panel names what is shown
        self.relink()
        self._apply_view()

    def _on_layers_changed(self, _event=None) -> None:
        self._fresh_labels = [layer for layer in self._fresh_labels if layer in self.viewer.layers]
        self.relink()
        self._apply_view()

    def _on_active(self, event) -> None:
        """A labels layer just added by medvae hands the selection back to its image (no brush
        one click away); a labels layer the user selects later stays selected."""
        layer = event.value
        if layer in self._fresh_labels:
            self._fresh_labels.remove(layer)
            images = [other for other in self.viewer.layers if is_intensity(other)]
            if images:
                self.viewer.layers.selection.active = images[-1]

    # -- window/level -----------------------------------------------------------------------------
    def _group(self, layer) -> list:
        key = window_group(layer)
        return [other for other in self.viewer.layers
                if is_intensity(other) and window_group(other) == key]

    def relink(self, _event=None) -> None:
        """Link the windows of each group (see `window_group`) while ``state.link_window`` is on."""
        for layer, callback in self._linked:
            layer.events.contrast_limits.disconnect(callback)
        self._linked = []
        if not self.state.link_window:
            return
        for layer in self.viewer.layers:
            if is_intensity(layer):
                callback = self._follower(layer)
                layer.events.contrast_limits.connect(callback)
                self._linked.append((layer, callback))

    def _follower(self, source):
        def follow(_event=None) -> None:
            if self._syncing:
                return
            self._syncing = True
            try:
                for other in self._group(source):
                    if other is not source and tuple(other.contrast_limits) != tuple(
                            source.contrast_limits):
                        other.contrast_limits = list(source.contrast_limits)
            finally:
                self._syncing = False
        return follow

    def target_layer(self):
        """The image a window preset applies to: the active one, else the top-most image."""
        active = self.viewer.layers.selection.active
        if active is not None and active._type_string == "image" and not medvae_meta(active).get("map"):
            return active
        images = [layer for layer in self.viewer.layers if is_intensity(layer) and layer.visible]
        return images[-1] if images else None

    def apply_preset(self, preset: str) -> tuple[float, float] | None:
        """Set a reading window (display only: the data and every computed result stay as they are)."""
        if preset not in PRESETS:
            raise ValueError(f"window preset must be one of {PRESETS}, got {preset!r}")
        layer = self.target_layer()
        if layer is None:
            return None
        limits = preset_limits(preset, np.asarray(layer.data))
        _widen_range(layer, limits)
        layer.contrast_limits = list(limits)
        self.state.preset = preset
        return limits

    # -- keys -------------------------------------------------------------------------------------
    def _bind_keys(self) -> None:
        bind = self.viewer.bind_key
        for view, key in VIEW_KEYS.items():
            bind(key, lambda _viewer, v=view: self.set_view(v), overwrite=True)
        for preset, key in PRESET_KEYS.items():
            bind(key, lambda _viewer, p=preset: self.apply_preset(p), overwrite=True)
        bind(LINK_KEY, lambda _viewer: setattr(self.state, "link_window",
                                               not self.state.link_window), overwrite=True)


def _widen_range(layer, limits) -> None:
    """Let a window reach beyond the data's range (e.g. a lung window on a head crop)."""
    low, high = layer.contrast_limits_range
    if limits[0] < low or limits[1] > high:
        layer.contrast_limits_range = [min(low, limits[0]), max(high, limits[1])]


def _status_with_units(layer, get_status):
    """napari's status of ``layer`` with the value in its units (HU for CT) and the position as
    voxel indices and patient RAS millimetres."""
    meta = medvae_meta(layer)

    def status(position=None, **kwargs):
        result = get_status(position, **kwargs)
        if position is None or "affine" not in meta or layer.ndim not in (2, 3):
            return result
        world = bool(kwargs.get("world", False))
        point = np.asarray(position, np.float64)[-layer.ndim:]
        voxel = np.asarray(layer.world_to_data(point) if world else point, np.float64)
        affine = np.asarray(meta["affine"], np.float64)
        ras = affine[:3, :layer.ndim] @ voxel + affine[:3, 3]
        index = " ".join(str(int(round(v))) for v in voxel)
        where = "RAS " + " ".join(f"{v:.1f}" for v in ras) + " mm"
        value = result.get("value", "") if isinstance(result, dict) else ""
        units = layer_units(meta)
        text = f"[{index}] {where}" + (f": {value} {units}".rstrip() if value else "")
        if isinstance(result, dict):
            result = {**result, "coordinates": text, "coords": f"[{index}] {where}"}
        return result

    return status


def layer_units(meta: dict) -> str:
    """Units of a layer's values: HU for CT images, their maps' units, '' when uncalibrated."""
    modality = meta.get("modality", "")
    if meta.get("kind") in INTENSITY_KINDS:
        return units_of(modality)
    if meta.get("kind") == "map" and meta.get("map"):
        return map_units(meta["map"], modality)
    return ""


_DISPLAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def install_display(viewer) -> RadiologicalDisplay | None:
    """The viewer's radiological display, created on first use (None without a viewer)."""
    if viewer is None:
        return None
    display = _DISPLAYS.get(viewer)
    if display is None:
        display = _DISPLAYS[viewer] = RadiologicalDisplay(viewer)
    return display


def install_on_current_viewer() -> RadiologicalDisplay | None:
    """For the reader and sample data, which napari calls without a viewer: the current one."""
    try:
        from napari import current_viewer  # napari starts Qt: imported when a viewer is used

        return install_display(current_viewer())
    except ImportError:  # pragma: no cover - napari is a dependency of the plugin
        return None
