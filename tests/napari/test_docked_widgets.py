"""Every widget of the plugin docked the way napari docks it from the Plugins menu: through
``add_plugin_dock_widget``, which hands the widget a public-only proxy of the viewer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import yaml
from qtpy.QtCore import Qt

import napari_medvae
from medvae_engine.study import create_study, spec_from_folders
from medvae_engine.study.persistence import read_log

pytestmark = pytest.mark.gui

MANIFEST = yaml.safe_load((Path(napari_medvae.__file__).parent / "napari.yaml").read_text())
WIDGET_NAMES = [w["display_name"] for w in MANIFEST["contributions"]["widgets"]]


@pytest.mark.parametrize("name", WIDGET_NAMES)
def test_every_widget_docks_from_the_plugins_menu(viewer, qtbot, name):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-medvae", name)
    assert dock.widget() is not None and name in dock.name
    qtbot.waitUntil(widget.native.isVisible, timeout=5000)
    assert widget.native.window() is dock.window()


@pytest.fixture
def ct_study(tmp_path) -> Path:
    originals = tmp_path / "originals"
    originals.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), originals / "ct.dcm")
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), originals / "mr.dcm")
    spec = spec_from_folders(originals, {"nearest4": {"codec": "nearest", "factor": 4}},
                             name="docked", seed=3, display="blinded_ab")
    return create_study(spec, tmp_path / "study")


def test_docked_reader_study_starts_reading_and_takes_keys(viewer, qtbot, ct_study):
    _, panel = viewer.window.add_plugin_dock_widget("napari-medvae", "Reader study")
    window = panel.native.window()
    window.activateWindow()
    window.raise_()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    panel.folder.value, panel.reader.value = ct_study, "site_reader"
    panel.open_button.native.click()
    assert panel.session is not None, panel.status.value
    assert [layer.name for layer in viewer.layers] == ["A", "B"]
    for layer in viewer.layers:
        assert layer.visible and np.ptp(np.asarray(layer.data)) > 0
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True)[..., :3]
    assert shot.max() > 50 and shot.std() > 10  # the images are on screen, not a blank canvas
    item = panel.session.current.id
    qtbot.keyClick(panel.native, "4")  # the shortcut answers the active question with +1
    log = read_log(ct_study / "answers" / "site_reader.jsonl")[0]
    assert [(r["item"], r["value"]) for r in log if r["type"] == "answer"] == [(item, 1)]
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Right)  # keys work with the focus on the canvas too
    assert panel.session.position[0] == 2
    panel.close_session()
    assert len(viewer.layers) == 0


def test_long_texts_in_docked_panels_are_shown_whole(viewer, qtbot, ct_study):
    """Metrics and reader-study questions wrap and get the height they need (a wrapped label that
    keeps its one-line height clips the rest: seen in the README screenshots)."""
    _, compare = viewer.window.add_plugin_dock_widget("napari-medvae", "Compare")
    compare.metrics.value = " ".join(["PSNR 35.80 dB, SSIM 0.894, MS-SSIM 0.977 against panel 1"] * 4)
    _, panel = viewer.window.add_plugin_dock_widget("napari-medvae", "Reader study")
    panel.folder.value = str(ct_study)
    panel.reader.value = "reader1"
    assert panel.open_session()
    labels = [compare.metrics.native, *(label.native for label in panel._question_labels)]
    qtbot.waitUntil(lambda: all(label.isVisible() for label in labels[1:]), timeout=5000)
    viewer.window._qt_window.resize(1280, 800)
    qtbot.wait(200)
    for label in (labels[1:] if not labels[0].isVisible() else labels):
        assert label.wordWrap()
        assert label.height() >= label.heightForWidth(label.width()) > 0, label.text()
