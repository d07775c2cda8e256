"""Helpers shared by the docked widgets: layer choices, the slicing axis, the current slice index."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from .._display import RadiologicalDisplay, install_display
from .._layers import layer_kind

PANEL_FLAG = "_medvae_panel"
NONE = "(none)"
WIDGET_WIDTH = 420  # px: docked panels leave the canvas most of the window


def image_layers(viewer, exclude_latents: bool = True) -> list[str]:
    """Names of image layers (latent layers excluded unless asked)."""
    return [
        layer.name for layer in viewer.layers
        if isinstance(layer, Image) and not (exclude_latents and layer_kind(layer) == "latent")
    ]


def layers_of(viewer, *types) -> list[str]:
    """Names of the layers of the given napari layer types."""
    return [layer.name for layer in viewer.layers if isinstance(layer, types or (Image, Labels))]


def slicing_axis(viewer, layer) -> int | None:
    """The layer's data axis the viewer slices through in 2D display (None for 2D layers)."""
    if layer.ndim < 3:
        return None
    offset = viewer.dims.ndim - layer.ndim
    hidden = [a - offset for a in viewer.dims.not_displayed if a - offset >= 0]
    return hidden[-1] if hidden else 0


def current_index(viewer, layer, axis: int) -> int:
    """The data index of the slice shown along ``axis``, clipped to the layer's extent."""
    data_point = layer.world_to_data(viewer.dims.point[-layer.ndim:])
    return int(np.clip(np.round(data_point[axis]), 0, layer.data.shape[axis] - 1))


def grid_of(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def wrapped(label):
    """A magicgui Label whose text wraps at the panel's width and takes the height it needs
    (a wrapped QLabel otherwise keeps its one-line height and clips the rest)."""
    from qtpy.QtCore import Qt  # Qt: imported when a viewer is used
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setAlignment(Qt.AlignLeft | Qt.AlignTop)
    label.native.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.MinimumExpanding)
    return label


def medvae_panel(widget, viewer) -> RadiologicalDisplay:
    """What every MedVAE panel does first: the viewer's radiological display, and once docked a
    tab next to the other MedVAE docks (all of them fit a 1920x1080 screen)."""
    from qtpy.QtCore import QTimer  # Qt: imported when a viewer is used

    setattr(widget.native, PANEL_FLAG, True)
    QTimer.singleShot(0, lambda: tabify_with_panels(widget.native))
    return install_display(viewer)


def tabify_with_panels(native) -> None:
    """Tab a docked MedVAE panel together with the MedVAE panels already docked on its side."""
    from qtpy.QtWidgets import QDockWidget  # Qt: imported when a viewer is used

    try:
        dock = native.parent()
        window = dock.parent() if isinstance(dock, QDockWidget) else None
    except RuntimeError:  # closed before the event loop came round
        return
    if window is None or not hasattr(window, "tabifyDockWidget"):
        return
    side = window.dockWidgetArea(dock)
    others = [other for other in window.findChildren(QDockWidget)
              if other is not dock and not other.isFloating() and other.isVisible()
              and getattr(other.widget(), PANEL_FLAG, False) and window.dockWidgetArea(other) == side]
    if others:
        window.tabifyDockWidget(others[0], dock)
        dock.raise_()
