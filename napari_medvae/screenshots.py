"""``python -m napari_medvae.screenshots docs/images``: the README's screenshots, made with the real
plugin in a real napari window (under Xvfb when there is one, so the window has a fixed size).

Three shots, each with the panels docked as napari docks them from Plugins > MedVAE: a real head CT
(pydicom-data 693_UNCR) opened through the plugin's reader, axial in its soft-tissue opening window;
its starter_4_1_2d reconstruction and maps in the captioned compare grid; and a small blinded reader
study of real CT slices being read in the Reader study panel. `write_readme_screenshots` returns what
each shot showed (layer state at capture time), which the GUI test checks against the PNGs.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom.data
from PIL import Image

from medvae_engine.study import create_study, spec_from_folders

from ._display import install_display
from ._layers import layer_kind
from ._session import get_session
from ._threading import SYNC_ENV
from .demo import start_xvfb
from .widgets._captions import caption_of
from .widgets._common import grid_of

PLUGIN = "napari-medvae"
WINDOW_SIZE = (1280, 800)
CT_FILE = "693_UNCR.dcm"  # pydicom-data: a 512 x 512 axial head CT slice
# pydicom's CT_small (thoracic spine): no padding outside the scan field, which 693_UNCR has
# (PixelPaddingValue read as -3024 HU, which the codec's [-1000, 1000] HU window cannot return)
COMPARE_FILE = "CT_small.dcm"
STUDY_FILES = ("693_UNCR.dcm", "CT_small.dcm")  # two real CT slices for the reader study
MODEL = "starter_4_1_2d"
SHOTS = {"ct": "ct_axial_soft_tissue.png", "compare": "compare_grid.png",
         "study": "reader_study.png"}


def write_readme_screenshots(out_dir: str | Path, viewer=None) -> dict[str, dict]:
    """Write the three README screenshots to ``out_dir``; returns, per shot, its path and the layer
    state at capture time. Uses ``viewer`` (a shown napari viewer) or a new one it closes after."""
    import napari  # napari starts Qt: imported when a viewer is used

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own = viewer is None
    viewer = napari.Viewer(title="napari-medvae", show=True) if own else viewer
    try:
        with synchronous_jobs(), tempfile.TemporaryDirectory() as scratch:
            viewer.window._qt_window.resize(*WINDOW_SIZE)  # napari has no public window-size API
            hide_layer_docks(viewer)
            panels = dock_panels(viewer)
            return {"ct": shot_ct(viewer, panels, out / SHOTS["ct"]),
                    "compare": shot_compare(viewer, panels, out / SHOTS["compare"]),
                    "study": shot_study(viewer, panels, out / SHOTS["study"], Path(scratch))}
    finally:
        if own:
            viewer.close()


@contextmanager
def synchronous_jobs():
    """Engine jobs in the calling thread, so each shot shows finished results."""

    before = os.environ.get(SYNC_ENV)
    os.environ[SYNC_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SYNC_ENV, None)
        else:
            os.environ[SYNC_ENV] = before


def dock_panels(viewer) -> dict:
    """The MedVAE panels a reading uses, docked through napari's plugin machinery (as tabs)."""
    names = ("View", "Model", "Encode / Reconstruct", "Maps", "Compare", "Reader study")
    panels = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in names}
    settle()
    return panels


def hide_layer_docks(viewer) -> None:
    """Leave the canvas the room the layer list and controls take (View > toggles them back)."""
    qt_viewer = viewer.window._qt_viewer
    for dock in (qt_viewer.dockLayerList, qt_viewer.dockLayerControls):
        dock.setVisible(False)


def settle(seconds: float = 0.5) -> None:
    """Let Qt lay out, tabify and draw (the canvas paints on the event loop)."""
    from napari.qt import get_qapp  # napari starts Qt: imported when a viewer is used

    app = get_qapp()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def raise_panel(panel) -> None:
    panel.native.parentWidget().raise_()


def canvas_box(viewer) -> list[int]:
    """The canvas's [top, left, height, width] in window-screenshot pixels."""
    from qtpy.QtCore import QPoint  # Qt: imported when a viewer is used

    canvas = viewer.window._qt_viewer.canvas.native
    window = viewer.window._qt_window
    corner = canvas.mapTo(window, QPoint(0, 0))
    ratio = window.devicePixelRatioF()
    return [round(v * ratio) for v in (corner.y(), corner.x(), canvas.height(), canvas.width())]


def save_window(viewer, path: Path) -> Path:
    """The whole window (canvas and docked panels) as a compressed PNG."""

    settle()
    pixels = viewer.screenshot(canvas_only=False)
    Image.fromarray(np.asarray(pixels)[..., :3]).save(path, optimize=True)
    return path


def camera_state(viewer) -> dict:
    camera = viewer.camera
    return {"center": list(camera.center[-2:]), "zoom": float(camera.zoom)}


def shot_ct(viewer, panels: dict, path: Path) -> dict:
    """A head CT opened through the plugin's reader: axial, soft-tissue window, letters, scale bar."""

    source = pydicom.data.get_testdata_file(CT_FILE)
    [layer] = viewer.open(source, plugin=PLUGIN)
    raise_panel(panels["View"])
    viewer.reset_view()
    settle()
    display = install_display(viewer)
    record = {"path": save_window(viewer, path), "source": source, "layer": layer.name,
              "contrast_limits": list(layer.contrast_limits), "canvas": canvas_box(viewer),
              "camera": camera_state(viewer), "letters": display.current_letters(),
              "scale_bar": bool(viewer.scale_bar.visible), "extent": _extent(viewer, layer)}
    return record


def shot_compare(viewer, panels: dict, path: Path) -> dict:
    """A CT reconstructed with the starter, its maps, and the captioned 2 x 2 compare grid."""

    viewer.layers.clear()
    [layer] = viewer.open(pydicom.data.get_testdata_file(COMPARE_FILE), plugin=PLUGIN)
    image = layer.name
    get_session(viewer).state.choice = MODEL
    encode, maps, compare = panels["Encode / Reconstruct"], panels["Maps"], panels["Compare"]
    encode.layer.value = image
    encode.run(latent=True, recon=True)
    settle()
    recon = next(layer.name for layer in viewer.layers if layer_kind(layer) == "reconstruction")
    maps.reset_choices()
    maps.reference.value, maps.test.value = image, recon
    maps.compute()
    settle()
    by_prefix = {prefix: next(layer.name for layer in viewer.layers if layer.name.startswith(prefix))
                 for prefix in ("difference", "abs_error")}
    chosen = [(image, ""), (recon, ""), (by_prefix["difference"], ""), (by_prefix["abs_error"], "")]
    compare.apply(4, chosen)
    raise_panel(compare)
    settle()
    shown = [viewer.layers[base] for base, _ in chosen]
    return {"path": save_window(viewer, path), "canvas": canvas_box(viewer),
            "grid": list(grid_of(viewer).shape),
            "captions": [caption_of(layer) for layer in shown],
            "colorbars": [bool(layer.colorbar.visible) for layer in shown],
            "visible": [layer.name for layer in viewer.layers if layer.visible]}


def shot_study(viewer, panels: dict, path: Path, scratch: Path) -> dict:
    """A blinded A/B study of two real CT slices (original vs starter) read in the docked panel."""


    compare = panels["Compare"]
    compare.grid_off()
    viewer.layers.clear()
    originals = scratch / "originals"
    originals.mkdir()
    for name in STUDY_FILES:
        shutil.copy(pydicom.data.get_testdata_file(name), originals / name.lower())
    spec = spec_from_folders(originals, {"starter": {"model": MODEL}}, name="pilot", seed=1,
                             display="blinded_ab")
    study = create_study(spec, scratch / "study")
    reader = panels["Reader study"]
    raise_panel(reader)
    reader.folder.value, reader.reader.value = study, "reader1"
    reader.open_button.native.click()
    reader.act("choose", 4)  # the first answer, +1 (key 4), as on the keyboard
    settle()
    panes = [layer for layer in viewer.layers if layer.visible]
    record = {"path": save_window(viewer, path), "canvas": canvas_box(viewer),
              "panes": [layer.name for layer in panes], "grid": list(grid_of(viewer).shape),
              "grid_enabled": bool(grid_of(viewer).enabled), "position": reader.position.value}
    reader.close_session()  # before the scratch study folder goes
    return record


def _extent(viewer, layer) -> list[list[float]]:
    """The layer's world box along the displayed axes (rows, columns), as the camera sees it."""
    world = np.asarray(layer.extent.world)[:, -viewer.dims.ndim:]
    return world[:, list(viewer.dims.displayed)].tolist()


def main(argv: list[str] | None = None) -> int:
    """Write the screenshots into the folder given (default docs/images), in Xvfb when installed."""

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs/images")
    xvfb = start_xvfb()
    if xvfb is None and not os.environ.get("DISPLAY"):
        print("error: screenshots need Xvfb (apt-get install xvfb) or a display", file=sys.stderr)
        return 2
    try:
        from napari.qt import get_qapp  # napari starts Qt: imported when a viewer is used

        get_qapp()
        for shot in write_readme_screenshots(out).values():
            print(shot["path"])
        return 0
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
