"""``python -m napari_medvae.demo [--headless] [--out demo_out]``: the plugin on a bundled real MRI.

Opens napari with the widgets docked, reconstructs the brain sample with the starter model (or, while
starter weights are not available, a clearly labelled bicubic baseline), overlays the difference
maps and turns the compare grid on. Without a display (or with ``--headless``) it runs the same
pipeline in a virtual X server (Xvfb) and writes the NIfTI outputs and PNG screenshots to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

from ._layers import layer_kind
from ._sample_data import mri_brain
from ._session import get_session, is_baseline
from ._writer import write_layer
from .widgets import CompareWidget, EncodeWidget, MapsWidget, ModelWidget
from .widgets._common import grid_of

SAMPLE = "mri_brain"
AXIAL = (2, 1, 0)  # slice along the MNI z axis: y (anterior) vertical, x (right) horizontal


def free_display() -> int:
    """The first X display number with neither a socket nor a lock file."""
    for number in range(90, 200):
        if not (Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists()):
            return number
    raise RuntimeError("no free X display number between :90 and :199")


def start_xvfb() -> subprocess.Popen | None:
    """Start Xvfb on a free display and point DISPLAY at it; None when Xvfb is not installed."""
    binary = shutil.which("Xvfb")
    if binary is None:
        return None
    number = free_display()
    process = subprocess.Popen([binary, f":{number}", "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.1)
    os.environ["DISPLAY"] = f":{number}"
    return process


def build_viewer(show: bool = True):
    """A new viewer with the four widgets docked and the brain sample loaded in an axial view."""
    import napari  # napari starts Qt: imported when a viewer is used

    viewer = napari.Viewer(title="napari-medvae demo", show=show)
    viewer.window._qt_window.resize(1800, 1050)  # napari has no public window-size API
    return (viewer, *populate(viewer))


def populate(viewer):
    """Dock the widgets and load the brain sample into ``viewer``; returns (image, widgets)."""

    data, attributes, _ = mri_brain()[0]
    image = viewer.add_image(data, **attributes)
    viewer.dims.order = AXIAL
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 moved it
    if hasattr(camera, "orientation2d"):  # napari >= 0.5: anterior up
        camera.orientation2d = ("up", "right")
    viewer.dims.set_current_step(2, viewer.dims.nsteps[2] // 2)
    widgets = {
        "model": ModelWidget(viewer), "encode": EncodeWidget(viewer),
        "maps": MapsWidget(viewer), "compare": CompareWidget(viewer),
    }
    for i, (name, widget) in enumerate(widgets.items()):
        viewer.window.add_dock_widget(widget, name=f"MedVAE {name}", area="right", tabify=i > 0)
    widgets["encode"].layer.value = image.name
    return image, widgets


def label_model(viewer) -> str:
    """Say on the canvas which model made the reconstruction (baselines clearly marked)."""
    choice = get_session(viewer).state.choice
    if is_baseline(choice):
        text = f"{choice} baseline (starter weights not available yet)"
    else:
        text = f"model: {choice}"
    overlay = viewer.canvas.overlays["text"] if hasattr(viewer, "canvas") else viewer.text_overlay
    overlay.text, overlay.visible = text, True
    return text


def run_pipeline(viewer, image, widgets, finished) -> None:
    """Reconstruct, then maps, then the compare grid; ``finished()`` runs at the end."""
    encode, maps, compare = widgets["encode"], widgets["maps"], widgets["compare"]

    def after_maps(running: bool) -> None:
        if running:
            return
        maps.job_state.events.running.disconnect(after_maps)
        if maps.job_state.message == "done":
            compare.apply(3, demo_panels(viewer, image.name))
            compare.native.parentWidget().raise_()
            viewer.reset_view()
        finished()

    def after_reconstruct(running: bool) -> None:
        if running:
            return
        encode.job_state.events.running.disconnect(after_reconstruct)
        if encode.job_state.message != "done":
            finished()
            return
        maps.reset_choices()
        maps.reference.value, maps.test.value = image.name, reconstruction(viewer).name
        maps.opacity.value = 0.7
        maps.job_state.events.running.connect(after_maps)
        maps.compute()

    label_model(viewer)
    encode.job_state.events.running.connect(after_reconstruct)
    encode.run(latent=True, recon=True)


def reconstruction(viewer):
    return next(layer for layer in viewer.layers if layer_kind(layer) == "reconstruction")


def demo_panels(viewer, image_name: str) -> list[tuple[str, str]]:
    """original | reconstruction with the signed difference over it | absolute error."""
    by_prefix = {prefix: next(layer.name for layer in viewer.layers if layer.name.startswith(prefix))
                 for prefix in ("difference", "abs_error")}
    return [(image_name, ""), (reconstruction(viewer).name, by_prefix["difference"]),
            (by_prefix["abs_error"], "")]


def write_outputs(viewer, out: Path, screenshots: bool) -> list[Path]:
    """NIfTI files of every layer the pipeline made, the latent file, and PNG screenshots."""

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in viewer.layers:
        kind = layer_kind(layer)
        if kind in (None, "spacer"):
            continue
        name = layer.name.split(" (")[0].split(" [")[0].replace(" ", "_")  # no units in names
        attributes = {"metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate}
        written.append(Path(write_layer(str(out / f"{name}.nii.gz"), layer.data, attributes,
                                        labels=kind == "labels")))
    if not screenshots:
        return written
    shots = {"window.png": False, "compare_grid.png": True}
    for name, canvas_only in shots.items():
        viewer.screenshot(path=str(out / name), canvas_only=canvas_only)
        written.append(out / name)
    grid_of(viewer).enabled = False
    for layer in viewer.layers:
        layer.visible = layer_kind(layer) in (None, "image") or layer.name.startswith("difference")
    viewer.reset_view()
    viewer.screenshot(path=str(out / "overlay.png"), canvas_only=True)
    return [*written, out / "overlay.png"]


def headless(out: Path) -> list[Path]:
    """The demo pipeline without a screen: Xvfb when available, outputs and screenshots in ``out``."""
    os.environ["NAPARI_MEDVAE_SYNC"] = "1"
    xvfb = start_xvfb()
    if xvfb is None and not os.environ.get("DISPLAY"):
        raise SystemExit("error: the headless demo needs Xvfb (apt-get install xvfb) or a display")
    try:
        from napari.qt import get_qapp  # napari starts Qt: imported when a viewer is used

        app = get_qapp()
        viewer, image, widgets = build_viewer(show=True)
        run_pipeline(viewer, image, widgets, lambda: None)
        for _ in range(20):  # let the canvas draw the final state
            app.processEvents()
            time.sleep(0.05)
        written = write_outputs(viewer, out, screenshots=True)
        viewer.close()
        app.processEvents()
        return written
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


def interactive() -> None:
    """Open napari with the plugin docked and run the pipeline in the background."""
    import napari  # napari starts Qt: imported when a viewer is used

    viewer, image, widgets = build_viewer(show=True)
    run_pipeline(viewer, image, widgets, lambda: None)
    napari.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_medvae.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--headless", action="store_true", help="no window: write outputs and screenshots")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (headless)")
    args = parser.parse_args(argv)
    if args.headless or not os.environ.get("DISPLAY"):
        for path in headless(args.out):
            print(path)
        return 0
    interactive()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
