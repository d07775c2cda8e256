"""The reader-study widget in a real napari viewer under Xvfb: a study built from real images
(pydicom CT/MR, a nibabel anatomical crop) with a bicubic f=4 baseline and a file-based method,
read with the keyboard only, resumed, locked after submit and analysed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel.testing
import numpy as np
import pydicom.data
import pytest
import yaml
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractButton, QLabel, QLineEdit, QWidget
from scipy import ndimage

from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.study import analyze_study, create_study, spec_from_folders
from medvae_engine.study.create import default_key_path
from medvae_engine.study.persistence import read_log
from medvae_engine.study.session import replay_log
from napari_medvae._layers import display_geometry
from napari_medvae.widgets._common import grid_of
from napari_medvae.widgets.reader_study import ReaderStudyWidget

pytestmark = pytest.mark.gui

METHODS = ("bicubic4", "gaussblur")  # must never reach the reader's screen
SCALE = (-2, -1, 0, 1, 2)
ENTER = Qt.Key.Key_Return
NAMED_KEYS = {"Up": Qt.Key.Key_Up, "Down": Qt.Key.Key_Down, "Tab": Qt.Key.Key_Tab}


def _originals(folder: Path) -> Path:
    """Two real DICOM slices and a crop of nibabel's anatomical MRI with its real geometry."""
    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom.data.get_testdata_file(name), folder / name.lower())
    brain = read_volume(Path(nibabel.testing.data_path) / "anatomical.nii")
    start = np.array([4, 6, 4])
    affine = brain.affine.copy()
    affine[:3, 3] = brain.affine[:3, :3] @ start + brain.affine[:3, 3]
    crop = brain.array[4:28, 6:38, 4:20]
    write_volume(Volume(crop, affine, "mri", {}), folder / "brain.nii.gz")
    return folder


def _blurred(originals: Path, folder: Path) -> Path:
    """A file-based method: each original smoothed, saved as NIfTI on the original's geometry."""
    folder.mkdir(parents=True)
    for path in sorted(originals.iterdir()):
        volume = read_volume(path)
        stem = path.name.split(".")[0]
        write_volume(volume.with_array(ndimage.gaussian_filter(volume.array, 1.0)),
                     folder / f"{stem}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    """The same cases and methods prepared once side by side and once blinded A/B."""
    root = tmp_path_factory.mktemp("reading")
    originals = _originals(root / "originals")
    methods = {METHODS[0]: {"codec": "bicubic", "factor": 4},
               METHODS[1]: str(_blurred(originals, root / "method_files"))}
    made = {}
    for display in ("side_by_side", "blinded_ab"):
        spec = spec_from_folders(originals, methods, name="pilot", seed=5, display=display)
        made[display] = create_study(spec, root / display)
    return made


@pytest.fixture
def study(studies, tmp_path) -> Path:
    """A fresh copy of the side-by-side study (readers' logs go into it), its key beside it."""
    copy = Path(shutil.copytree(studies["side_by_side"], tmp_path / "study"))
    shutil.copy(default_key_path(studies["side_by_side"]), default_key_path(copy))
    return copy


@pytest.fixture
def widget(viewer, qtbot):
    """The docked widget in an active main window (window shortcuts need an active window)."""
    panel = ReaderStudyWidget(viewer)
    viewer.window.add_dock_widget(panel)
    window = viewer.window._qt_window
    window.activateWindow()
    window.raise_()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    return panel


def canvas_of(viewer) -> QWidget:
    return viewer.window._qt_viewer.canvas.native


def texts(panel) -> str:
    """Every text the panel shows: labels, buttons, fields and tooltips."""
    found = []
    for child in [panel.native, *panel.native.findChildren(QWidget)]:
        found.append(child.toolTip())
        if isinstance(child, QLabel | QAbstractButton | QLineEdit):
            found.append(child.text())
    return "\n".join(found)


def log_of(study: Path, reader: str) -> list[dict]:
    return read_log(study / "answers" / f"{reader}.jsonl")[0]


def read_everything(qtbot, panel, target, digits_of) -> dict[str, list[int]]:
    """Answer and confirm every item with key presses on ``target``; returns the digits used."""
    pressed = {}
    for _ in range(panel.session.position[1]):
        item = panel.session.current.id
        digits = digits_of(item)
        for key in digits:
            qtbot.keyClick(target, NAMED_KEYS.get(key, key))
        qtbot.keyClick(target, ENTER)
        pressed[item] = [int(k) for k in digits if k.isdigit()]
    return pressed


def test_two_readers_read_with_the_keyboard_and_the_study_is_analysed(viewer, widget, qtbot, study,
                                                                     tmp_path):
    key = json.loads(default_key_path(study).read_text())["items"]
    n_items = len(key)
    # reader 1 types into the panel: one digit per question, the active question moves on itself
    assert widget.open_session(study, "reader1")
    assert widget.position.value == f"Item 1 of {n_items}" and widget.progress.value == 0
    first = widget.session.current.id
    qtbot.keyClick(widget.native, ENTER)  # nothing answered yet: no confirmation
    assert widget.session.current.id == first and "before confirming" in widget.status.value
    one = read_everything(qtbot, widget, widget.native,
                          lambda item: ["2", "3", "1"] if key[item]["method"] == METHODS[0]
                          else ["4", "3", "5"])
    assert widget.session.complete and widget.progress.value == n_items
    qtbot.keyClick(widget.native, ENTER, Qt.KeyboardModifier.ControlModifier)  # submit
    assert widget.session.submitted
    widget.close_session()
    # reader 2 keeps the focus on the canvas and answers the last question first
    assert widget.open_session(study, "reader2")
    canvas = canvas_of(viewer)
    canvas.setFocus()
    two = read_everything(qtbot, widget, canvas,
                          lambda item: ["Down", "Down", "1", "Up", "Up", "3", "3"]
                          if key[item]["method"] == METHODS[0] else ["Tab", "Tab", "4", "Up",
                                                                     "Up", "4", "5"])
    two = {item: [d[1], d[2], d[0]] for item, d in two.items()}  # typed last question first
    qtbot.keyClick(canvas, ENTER, Qt.KeyboardModifier.ControlModifier)
    assert widget.session.submitted
    order = {r: next(rec["order"] for rec in log_of(study, r) if rec["type"] == "start")
             for r in ("reader1", "reader2")}
    assert sorted(order["reader1"]) == sorted(order["reader2"]) == sorted(key)
    assert order["reader1"] != order["reader2"]
    for reader, digits in (("reader1", one), ("reader2", two)):
        records = log_of(study, reader)
        _, states, submitted = replay_log(records, list(key))
        assert submitted and all(s.confirmed for s in states.values())
        assert sum(r["type"] == "answer" for r in records) == 3 * n_items
        for item, state in states.items():
            assert [state.answers[q] for q in ("fidelity", "clinical_features", "artifacts")] == [
                SCALE[d - 1] for d in digits[item]]
            assert state.seconds > 0
    report = analyze_study(study, tmp_path / "report")
    for name in ("summary.csv", "results.json", "scores.png", "ratings.csv"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    for row in report["summary"]:
        means = [np.mean([SCALE[d[("fidelity", "clinical_features", "artifacts").index(
            row["question"])] - 1] for item, d in digits.items() if key[item]["method"] ==
            row["method"]]) for digits in (one, two)]
        assert row["n_readers"] == 2 and row["mean"] == pytest.approx(np.mean(means))


def test_reopening_resumes_at_the_same_item_and_other_readers_see_nothing_of_it(viewer, widget,
                                                                              qtbot, study):
    assert widget.open_session(study, "reader3")
    for _ in range(2):
        for digit in "343":
            qtbot.keyClick(widget.native, digit)
        qtbot.keyClick(widget.native, ENTER)
    qtbot.keyClick(widget.native, "5")
    qtbot.keyClick(widget.native, "1")
    qtbot.keyClicks(widget.comment.native, "apex unclear")
    widget.comment.native.editingFinished.emit()
    qtbot.keyClick(canvas_of(viewer), "F")
    item, answers = widget.session.current.id, widget.session.answers
    assert answers == {"fidelity": 2, "clinical_features": -2} and widget.flagged.value
    assert widget.position.value.startswith("Item 3 of") and widget.progress.value == 2
    widget.close_session()
    assert not widget.panes and not grid_of(viewer).enabled and len(viewer.layers) == 0
    assert "apex unclear" not in texts(widget)
    assert any(r["type"] == "visit" and r["item"] == item and r["seconds"] > 0
               for r in log_of(study, "reader3"))
    # another reader in the same panel starts from scratch
    assert widget.open_session(study, "reader4")
    assert widget.session.answers == {} and widget.progress.value == 0
    assert all(w.value is None for w in widget._answer_widgets)
    assert "apex unclear" not in texts(widget) and not widget.flagged.value
    widget.close_session()
    # a new panel (as after a restart) resumes reader 3 exactly where they stopped
    again = ReaderStudyWidget(viewer)
    viewer.window.add_dock_widget(again)
    again.folder.value, again.reader.value = study, "reader3"
    again.open_button.native.click()
    assert again.session.current.id == item and again.session.answers == answers
    assert [w.value for w in again._answer_widgets] == [2, -2, None]
    assert again.comment.value == "apex unclear" and again.flagged.value
    assert again.position.value.startswith("Item 3 of") and again.progress.value == 2
    qtbot.keyClick(canvas_of(viewer), "3")  # the remaining question is the active one
    qtbot.keyClick(canvas_of(viewer), ENTER)
    assert again.progress.value == 3 and again.session.current.id != item


def test_pair_shown_side_by_side_in_a_linked_grid_without_method_names(viewer, widget, qtbot,
                                                                      studies, tmp_path):
    for display, captions in (("blinded_ab", ["A", "B"]),
                              ("side_by_side", ["Original", "Reconstruction"])):
        folder = Path(shutil.copytree(studies[display], tmp_path / display))
        key = json.loads(default_key_path(studies[display]).read_text())["items"]
        assert widget.open_session(folder, "reader1")
        for step in range(3):
            panes = widget.panes
            assert [layer.name for layer in viewer.layers] == captions
            assert grid_of(viewer).enabled and tuple(grid_of(viewer).shape) == (1, 2)
            assert grid_of(viewer).stride == 1
            entry = key[widget.session.current.id]
            original = read_volume(entry["original"])
            side = "ab".index(entry["original_side"])
            low, high = entry["window"]  # both prepared through the codec's window
            shown = np.clip(original.array, low, high)
            np.testing.assert_allclose(panes[side].data, shown, rtol=1e-5, atol=1e-3)
            assert not np.allclose(panes[1 - side].data, shown)
            scale, translate = display_geometry(original.affine, original.ndim)
            for layer in panes:
                np.testing.assert_allclose(layer.scale, scale, rtol=1e-5)
                np.testing.assert_allclose(layer.translate, translate, atol=1e-4)
            # one display window for both panes (the reading window), so contrast gives nothing away
            assert tuple(panes[0].contrast_limits) == tuple(panes[1].contrast_limits)
            if original.modality == "ct":  # bone above +1000 HU is clipped in both panes
                assert (low, high) == (-1000.0, 1000.0) and original.array.max() > high
                for layer in panes:
                    assert -1000 <= layer.data.min() and layer.data.max() <= 1000
            shown = texts(widget) + " ".join(layer.name + str(layer.metadata) for layer in panes)
            for secret in (*METHODS, "bicubic", "gauss", *{e["case"] for e in key.values()}):
                assert secret not in shown
            if display == "side_by_side" and step == 0:
                qtbot.wait(100)  # the view is fitted again once the grid's canvas has settled
                shot = viewer.screenshot(path=str(tmp_path / "pair.png"), canvas_only=True)[..., :3]
                edges = (shot[0], shot[-1], shot[:, 0], shot[:, -1])
                assert any(edge.max() < 10 for edge in edges)  # whole images in view, margins black
                half = shot.shape[1] // 2
                left, right = shot[:, :half].astype(int), shot[:, half:2 * half].astype(int)
                assert left.max() > 50 and right.max() > 50 and np.abs(left - right).max() > 30
            qtbot.keyClick(canvas_of(viewer), Qt.Key.Key_PageDown)
        qtbot.keyClick(canvas_of(viewer), Qt.Key.Key_Left)
        assert widget.session.position[0] == 3
        widget.close_session()


def test_submit_locks_the_answers(viewer, widget, qtbot, study):
    assert widget.open_session(study, "reader5")
    read_everything(qtbot, widget, canvas_of(viewer), lambda item: ["3", "3", "3"])
    assert widget.submit_button.enabled
    widget.submit_button.native.click()
    assert widget.session.submitted and "locked" in widget.status.value
    log = study / "answers" / "reader5.jsonl"
    size = log.stat().st_size
    for key in ("1", "F", ENTER):
        qtbot.keyClick(canvas_of(viewer), key)
    assert log.stat().st_size == size and "locked" in widget.status.value
    assert not any(w.enabled for w in widget._answer_widgets)
    assert not widget.comment.enabled and not widget.confirm_button.enabled
    position = widget.session.position[0]
    qtbot.keyClick(canvas_of(viewer), Qt.Key.Key_Left)  # looking back is still possible
    assert widget.session.position[0] == position - 1 and log.stat().st_size == size
    widget.close_session()
    assert widget.open_session(study, "reader5")
    assert widget.session.submitted and not widget.flagged.enabled and "locked" in widget.status.value


def test_forward_only_unlocked_study_disables_moving_back_and_allows_revision(viewer, widget, qtbot,
                                                                              study):
    settings = yaml.safe_load((study / "study.yaml").read_text())
    settings.update(navigation=False, lock_after_submit=False)
    (study / "study.yaml").write_text(yaml.safe_dump(settings))
    assert widget.open_session(study, "reader6")
    assert not widget.previous_button.enabled and not widget.next_button.enabled
    qtbot.keyClick(canvas_of(viewer), Qt.Key.Key_Right)
    assert widget.session.position[0] == 1 and "does not allow moving" in widget.status.value
    read_everything(qtbot, widget, canvas_of(viewer), lambda item: ["4", "4", "4"])
    widget.submit_button.native.click()
    assert widget.session.submitted and "revise" in widget.status.value
    log = study / "answers" / "reader6.jsonl"
    size = log.stat().st_size
    qtbot.keyClick(canvas_of(viewer), "1")  # a revision after submitting is saved
    assert log.stat().st_size > size and log_of(study, "reader6")[-1]["value"] == -2
    assert widget.submit_button.enabled
    widget.close_session()


def test_blinded_ab_questions_compare_b_with_a_in_the_panel(widget, studies, tmp_path):
    folder = Path(shutil.copytree(studies["blinded_ab"], tmp_path / "ab"))
    assert widget.open_session(folder, "reader7")
    labels = [label.value for label in widget._question_labels]
    assert len(labels) == 3 and all("image B compare with image A" in text for text in labels)
    assert "original" not in texts(widget).lower()
    tooltip = widget._answer_widgets[0].tooltip
    assert "-2: A much better" in tooltip and "+2: B much better" in tooltip
    widget._answer_widgets[0].value = -2
    assert widget._anchors[0].value.startswith("A much better")
    widget.close_session()


def test_panel_refuses_a_study_folder_holding_its_key(viewer, widget, study, errors):
    shutil.copy(default_key_path(study), study / "key.json")
    assert not widget.open_session(study, "reader8")
    assert widget.session is None and len(viewer.layers) == 0
    assert str(study / "key.json") in widget.status.value and "answer key" in widget.status.value
    assert any("answer key" in message for message in errors)
    assert not (study / "answers").exists()
