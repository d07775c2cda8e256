"""The radiological display in a real napari viewer under Xvfb: orientation, letters, scale bar,
reading windows and their links, readouts in units, maps one at a time, captioned compare panels,
and every panel docked on a 1920x1080 screen."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from nibabel.affines import apply_affine
from pydicom.data import get_testdata_file
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.study import create_study, spec_from_folders
from napari_medvae._display import install_display
from napari_medvae._layers import layer_kind, volume_to_layer_data
from napari_medvae._radiology import PERCENTILE_PRESET
from napari_medvae._sample_data import sample_path
from napari_medvae._writer import write_image
from napari_medvae.widgets._captions import caption_of
from napari_medvae.widgets._common import grid_of

pytestmark = pytest.mark.gui
PLUGIN = "napari-medvae"
MARKER = 400.0


# -- volumes: one brain stored RAS, LPS and S-A-R, with 1 x 2 x 1 mm voxels -------------------------
def flipped(volume: Volume, axis: int) -> Volume:
    affine = volume.affine.copy()
    affine[:3, 3] += volume.affine[:3, axis] * (volume.shape[axis] - 1)
    affine[:3, axis] = -volume.affine[:3, axis]
    return Volume(np.flip(volume.array, axis).copy(), affine, volume.modality, {})


def transposed(volume: Volume, order: tuple[int, ...]) -> Volume:
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, list(order)]
    return Volume(np.ascontiguousarray(volume.array.transpose(order)), affine, volume.modality, {})


@pytest.fixture(scope="module")
def brain_ras() -> Volume:
    """An anisotropic (1 x 2 x 1 mm) RAS crop of the bundled MNI152 brain."""
    mni = read_volume(sample_path("mri_brain"))
    start = np.array([16, 16, 30])
    affine = mni.affine.copy()
    affine[:3, 3] = apply_affine(mni.affine, start)
    affine[:3, 1] *= 2
    array = mni.array[16:96, 16:120:2, 30:90].astype(np.float32)
    array[64:76, 40:50] = MARKER  # the template is symmetric: mark the patient's right front
    return Volume(array, affine, "mri", {})


STORAGE = {
    "RAS": lambda v: v,
    "LPS": lambda v: flipped(flipped(v, 0), 1),
    "SAR": lambda v: flipped(transposed(v, (2, 1, 0)), 0),  # stored S->I?, A, R: axes permuted
}


def open_file(viewer, path):
    viewer.open(str(path), plugin=PLUGIN)
    QApplication.processEvents()
    return viewer.layers[-1]


def ras_voxel_in(stored: Volume, ras: Volume, ijk) -> np.ndarray:
    """The stored volume's voxel index of RAS voxel ``ijk``."""
    return apply_affine(np.linalg.inv(stored.affine), apply_affine(ras.affine, ijk))


def go_to(viewer, layer, voxel) -> None:
    """Move the sliced world axis to the slice through ``voxel`` of ``layer``."""
    world = layer.data_to_world(voxel)
    sliced = viewer.dims.order[0]
    viewer.dims.set_point(sliced, world[sliced])
    QApplication.processEvents()


def shown_slice(viewer, layer) -> np.ndarray:
    """The slice as napari lays it out on screen (world grows rightwards and downwards): the voxel
    centres of the displayed world axes mapped back through the layer's world-to-data (an affine
    map, so three points give every voxel)."""
    assert tuple(viewer.camera.orientation2d) == ("down", "right")
    rows_dim, cols_dim = viewer.dims.order[-2:]

    def centres(dim):  # world coordinates of the voxel centres along a displayed axis, ascending
        last = np.zeros(layer.ndim)
        last[dim] = layer.data.shape[dim] - 1
        ends = sorted([layer.data_to_world(np.zeros(layer.ndim))[dim], layer.data_to_world(last)[dim]])
        return np.linspace(ends[0], ends[1], layer.data.shape[dim])

    rows, cols = centres(rows_dim), centres(cols_dim)
    point = np.array(viewer.dims.point, np.float64)
    point[rows_dim], point[cols_dim] = rows[0], cols[0]
    origin = np.asarray(layer.world_to_data(point))
    point[rows_dim] = rows[1]
    down = np.asarray(layer.world_to_data(point)) - origin
    point[rows_dim], point[cols_dim] = rows[0], cols[1]
    right = np.asarray(layer.world_to_data(point)) - origin
    r, c = np.meshgrid(np.arange(len(rows)), np.arange(len(cols)), indexing="ij")
    index = origin + r[..., None] * down + c[..., None] * right
    return np.asarray(layer.data)[tuple(np.round(np.moveaxis(index, -1, 0)).astype(int))]


def canvas_image(viewer, layer) -> np.ndarray:
    """The canvas screenshot cropped to the image (letters and scale bar hidden, zero shown grey)."""
    display = install_display(viewer)
    for overlay in display.letter_overlays().values():
        overlay.visible = False
    viewer.canvas.overlays.scale_bar.visible = False
    layer.interpolation2d = "nearest"
    layer.contrast_limits = [-float(layer.data.max()), float(layer.data.max())]
    viewer.reset_view()
    QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=True)[..., 0].astype(np.float32)
    rows, cols = np.nonzero(shot > 20)
    return shot[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def resample(image: np.ndarray, shape) -> np.ndarray:
    rows = ((np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1]).astype(int)
    return image[np.ix_(rows, cols)]


def correlation(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("storage", list(STORAGE))
def test_axial_slice_has_patient_right_on_screen_left_and_anterior_up(viewer, tmp_path, brain_ras,
                                                                      storage):
    stored = STORAGE[storage](brain_ras)
    path = write_volume(stored, tmp_path / f"brain_{storage}.nii.gz")
    layer = open_file(viewer, path)
    np.testing.assert_array_equal(layer.data, stored.array)  # the data keep their voxel order
    z = 25
    go_to(viewer, layer, ras_voxel_in(stored, brain_ras, (0, 0, z)))
    expected = brain_ras.array[::-1, ::-1, z].T  # rows: anterior first; columns: patient right first
    np.testing.assert_array_equal(shown_slice(viewer, layer), expected)
    assert install_display(viewer).current_letters() == {"top": "A", "bottom": "P", "left": "R",
                                                         "right": "L"}
    # and on the screen itself: the brain's voxel aspect (80 x 1 mm wide, 52 x 2 mm high) and the
    # slice fits the expected layout far better than any mirrored one
    shot = canvas_image(viewer, layer)
    assert shot.shape[1] / shot.shape[0] == pytest.approx(80 / 104, rel=0.03)
    seen = resample(shot, expected.shape)
    score = correlation(seen, expected)
    assert score > 0.9
    for mirrored in (expected[::-1], expected[:, ::-1], expected[::-1, ::-1]):
        assert correlation(seen, mirrored) < score - 0.2
    rows, cols = np.nonzero(seen >= seen.max() - 1)  # the right-front marker: top left on screen
    assert rows.mean() < seen.shape[0] / 2 and cols.mean() < seen.shape[1] / 2
    # saving writes the file's own geometry back, whatever the display shows
    _, attributes, _ = layer.as_layer_data_tuple()
    (written,) = write_image(str(tmp_path / "saved.nii.gz"), layer.data, attributes)
    back = read_volume(written)
    np.testing.assert_allclose(back.affine, stored.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, stored.array)


def test_coronal_and_sagittal_views_on_keys_with_letters(viewer, tmp_path, brain_ras):
    stored = STORAGE["LPS"](brain_ras)
    layer = open_file(viewer, write_volume(stored, tmp_path / "brain_lps.nii.gz"))
    display = install_display(viewer)
    assert viewer.canvas.overlays.scale_bar.visible
    assert all(str(unit) == "millimeter" for unit in layer.units)
    canvas = viewer.window._qt_viewer.canvas.native
    x, y, z = 40, 30, 25
    QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.AltModifier)
    assert display.state.view == "coronal"
    go_to(viewer, layer, ras_voxel_in(stored, brain_ras, (0, y, 0)))
    np.testing.assert_array_equal(shown_slice(viewer, layer), brain_ras.array[::-1, y, ::-1].T)
    letters = {edge: overlay.text for edge, overlay in display.letter_overlays().items()}
    assert letters == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    QTest.keyClick(canvas, Qt.Key.Key_S, Qt.KeyboardModifier.AltModifier)
    go_to(viewer, layer, ras_voxel_in(stored, brain_ras, (x, 0, 0)))
    np.testing.assert_array_equal(shown_slice(viewer, layer), brain_ras.array[x, ::-1, ::-1].T)
    letters = {edge: overlay.text for edge, overlay in display.letter_overlays().items()}
    assert letters == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    assert all(overlay.visible and overlay.gridded for overlay in display.letter_overlays().values())
    QTest.keyClick(canvas, Qt.Key.Key_A, Qt.KeyboardModifier.AltModifier)
    go_to(viewer, layer, ras_voxel_in(stored, brain_ras, (0, 0, z)))
    np.testing.assert_array_equal(shown_slice(viewer, layer), brain_ras.array[::-1, ::-1, z].T)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR2_UNCR.dcm"])
def test_a_dicom_slice_is_shown_as_a_dicom_viewer_shows_it(viewer, name):
    """Rows top to bottom and columns left to right as stored: for the axial CT that is patient
    right on the left and anterior up; for the oblique sagittal shoulder MR, superior up."""
    import pydicom

    path = get_testdata_file(name)
    dataset = pydicom.dcmread(path)
    stored = dataset.pixel_array * float(getattr(dataset, "RescaleSlope", 1)) + float(
        getattr(dataset, "RescaleIntercept", 0))
    layer = open_file(viewer, path)
    np.testing.assert_allclose(shown_slice(viewer, layer), stored, atol=1e-3)
    letters = install_display(viewer).current_letters()
    if name == "CT_small.dcm":
        assert letters == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    else:
        assert letters["top"] == "S" and letters["bottom"] == "I"


def test_ct_opens_in_a_soft_tissue_window_and_presets_follow_panel_and_keys(viewer):
    layer = open_file(viewer, get_testdata_file("CT_small.dcm"))
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)  # abdomen W 400 / L 40 HU
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "View")
    panel.preset.value = "lung"
    panel.apply_button.clicked()
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)  # W 1500 / L -600
    canvas = viewer.window._qt_viewer.canvas.native
    QTest.keyClick(canvas, Qt.Key.Key_1, Qt.KeyboardModifier.AltModifier)
    assert tuple(layer.contrast_limits) == (0.0, 80.0)  # brain W 80 / L 40
    assert panel.preset.value == "brain"
    QTest.keyClick(canvas, Qt.Key.Key_5, Qt.KeyboardModifier.AltModifier)
    assert tuple(layer.contrast_limits) == (-500.0, 1500.0)  # bone W 2000 / L 500
    # the status bar reads HU and patient millimetres
    voxel = (40, 70)
    status = layer.get_status(layer.data_to_world(voxel), world=True)["coordinates"]
    source = read_volume(get_testdata_file("CT_small.dcm"))
    ras = apply_affine(source.affine, (*voxel, 0))
    assert status.endswith(f"{source.array[voxel]:.4g} HU") or f"{source.array[voxel]:g} HU" in status
    assert "RAS " + " ".join(f"{v:.1f}" for v in ras) + " mm" in status


def test_mr_opens_in_a_percentile_window(viewer):
    layer = open_file(viewer, get_testdata_file("MR_small.dcm"))
    np.testing.assert_allclose(layer.contrast_limits,
                               np.percentile(read_volume(get_testdata_file("MR_small.dcm")).array,
                                             [1, 99.5]), rtol=1e-6)


def test_reconstruction_shares_the_window_until_unlinked_and_windows_change_no_result(
        viewer, sync_jobs, tiny_model_path):
    from napari_medvae._session import CUSTOM, get_session

    image = open_file(viewer, get_testdata_file("CT_small.dcm"))
    state = get_session(viewer).state
    state.choice, state.checkpoint = CUSTOM, str(tiny_model_path)
    state.precision = "fp32"  # bit-reproducible runs
    _, encode = viewer.window.add_plugin_dock_widget(PLUGIN, "Encode / Reconstruct")
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "View")
    encode.layer.value = image.name
    encode.run()
    recon = next(layer for layer in viewer.layers if layer_kind(layer) == "reconstruction")
    first = np.array(recon.data)
    assert tuple(recon.contrast_limits) == tuple(image.contrast_limits) == (-160.0, 240.0)
    assert "tiny_f4" in recon.name and state.precision in recon.name
    viewer.layers.selection.active = image
    canvas = viewer.window._qt_viewer.canvas.native
    QTest.keyClick(canvas, Qt.Key.Key_2, Qt.KeyboardModifier.AltModifier)  # subdural 200/75
    assert tuple(recon.contrast_limits) == (-25.0, 175.0)
    panel.link.value = False  # one click unlinks
    viewer.layers.selection.active = image
    QTest.keyClick(canvas, Qt.Key.Key_4, Qt.KeyboardModifier.AltModifier)  # lung
    assert tuple(image.contrast_limits) == (-1350.0, 150.0)
    assert tuple(recon.contrast_limits) == (-25.0, 175.0)
    viewer.layers.remove(recon)
    encode.run()  # the display window is not the codec's intensity window
    again = next(layer for layer in viewer.layers if layer_kind(layer) == "reconstruction")
    np.testing.assert_array_equal(again.data, first)


@pytest.fixture
def maps_scene(viewer, sync_jobs, mri_crop):
    """An image, an AE reconstruction and an 'SR' result with invented and removed structures."""
    def add(volume, name):
        data, attributes, _ = volume_to_layer_data(volume, name)
        return viewer.add_image(data, **attributes)

    image = add(mri_crop, "brain")
    rng = np.random.default_rng(0)
    add(mri_crop.with_array(mri_crop.array + rng.normal(0, 3, mri_crop.shape)), "ae")
    sr = mri_crop.array + rng.normal(0, 3, mri_crop.shape)
    sr[10:14, 5:10, 5:10] += 120.0
    add(mri_crop.with_array(sr), "sr")
    _, maps = viewer.window.add_plugin_dock_widget(PLUGIN, "Maps")
    maps.reset_choices()
    maps.reference.value, maps.test.value, maps.ae.value = image.name, "sr", "ae"
    maps.compute()
    return image, maps


def test_one_map_at_a_time_with_colour_bars_units_and_no_paint_tool(viewer, maps_scene):
    image, maps = maps_scene
    made = [layer for layer in viewer.layers if layer.metadata["medvae"].get("map")]
    assert len(made) == 4  # difference, abs_error, subband_HH1, hallucination labels
    assert [layer.name for layer in made if layer.visible] == [made[0].name]
    assert made[0].name == "difference [a.u.] (sr vs brain)"
    assert set(maps.show_map.choices) == {*(layer.name for layer in made), "(all maps)"}
    labels = next(layer for layer in made if layer._type_string == "labels")
    maps.show_map.value = labels.name
    assert [layer.name for layer in made if layer.visible] == [labels.name]
    maps.show_map.value = "(all maps)"
    assert all(layer.visible for layer in made)
    for layer in made:
        if layer._type_string == "image":
            assert layer.colorbar.visible and "[a.u.]" in layer.name
    assert labels.mode == "pan_zoom"
    assert viewer.layers.selection.active._type_string == "image"
    assert maps.legend.native.wordWrap() and maps.readout.native.wordWrap()
    maps.measure()
    assert "reference's range" in maps.readout.value and "a.u." in maps.readout.value


def test_compare_panels_are_captioned_with_scores_on_canvas_and_png(viewer, sync_jobs, mri_crop,
                                                                    tiny_model_path, tmp_path):
    from imageio.v3 import imread

    from napari_medvae._compare import format_metrics, panel_metrics
    from napari_medvae._session import CUSTOM, get_session

    data, attributes, _ = volume_to_layer_data(mri_crop, "brain")
    image = viewer.add_image(data, **attributes)
    state = get_session(viewer).state
    state.choice, state.checkpoint = CUSTOM, str(tiny_model_path)
    _, encode = viewer.window.add_plugin_dock_widget(PLUGIN, "Encode / Reconstruct")
    encode.layer.value = image.name
    encode.run()
    recon = next(layer for layer in viewer.layers if layer_kind(layer) == "reconstruction")
    _, maps = viewer.window.add_plugin_dock_widget(PLUGIN, "Maps")
    maps.reset_choices()
    maps.reference.value, maps.test.value = image.name, recon.name
    maps.compute()
    diff = next(layer for layer in viewer.layers if layer.name.startswith("difference"))
    _, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare")
    assert compare.link.value  # windows linked by default
    compare.apply(3, [(image.name, ""), (recon.name, ""), (diff.name, "")])
    assert grid_of(viewer).enabled
    assert caption_of(image) == "Original: brain"
    lines = caption_of(recon).splitlines()
    assert lines[0] == f"Reconstruction: tiny_f4, {state.precision}"
    axis = viewer.dims.order[0]
    index = int(np.round(image.world_to_data(viewer.dims.point)[axis]))
    expected = format_metrics(panel_metrics(image.data, recon.data, axis, index))
    assert lines[1:] == expected.splitlines()
    assert lines[1].startswith("slice: PSNR") and lines[2].startswith("volume: PSNR")
    go_to(viewer, image, (0, 0, 3) if axis == 2 else (3, 0, 0))  # another slice: scores follow it
    moved = int(np.round(image.world_to_data(viewer.dims.point)[axis]))
    assert moved != index
    now = format_metrics(panel_metrics(image.data, recon.data, axis, moved)).splitlines()
    assert caption_of(recon).splitlines()[1:] == now and now[0] != lines[1] and now[1] == lines[2]
    assert caption_of(diff) == diff.name and "[a.u.] (" in diff.name and diff.colorbar.visible
    assert "not the display window" in compare.metrics.value
    shot = imread(compare.screenshot(tmp_path / "grid.png"))[..., :3].astype(int)
    for layer in (image, recon, diff):
        layer._overlays["medvae_caption"].visible = False
    bare = imread(compare.screenshot(tmp_path / "bare.png"))[..., :3].astype(int)
    changed = np.abs(shot - bare).sum(axis=2) > 60
    third = shot.shape[1] // 3
    for panel in range(3):  # each panel's caption is in the PNG, at its top left
        corner = changed[: shot.shape[0] // 4, panel * third: panel * third + third // 2]
        assert corner.sum() > 30, panel


def test_every_panel_docked_fits_a_1920x1080_screen(viewer):
    names = ["Model", "Encode / Reconstruct", "Maps", "Compare", "Super-resolve", "Reader study",
             "View"]
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[0] for name in names]
    QApplication.processEvents()  # docked panels join the MedVAE tabs
    window = viewer.window._qt_window
    window.resize(1920, 1080)
    QApplication.processEvents()
    assert window.minimumSizeHint().height() <= 1080
    assert window.height() <= 1080
    assert all(window.tabifiedDockWidgets(dock) for dock in docks)


def ct_study(tmp_path, display: str):
    """A one-case study of real CT_small.dcm against bicubic x4."""
    originals = tmp_path / "originals"
    originals.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), originals / "ct_small.dcm")
    spec = spec_from_folders(originals, {"bicubic4": {"codec": "bicubic", "factor": 4}},
                             name="pilot", seed=1, display=display)
    return create_study(spec, tmp_path / "study")


def test_reader_study_panes_are_radiological_in_a_linked_ct_window(viewer, tmp_path):
    study = ct_study(tmp_path, "side_by_side")
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Reader study")
    assert panel.open_session(study, "reader1")
    left, right = panel.panes
    assert tuple(left.contrast_limits) == tuple(right.contrast_limits) == (-160.0, 240.0)
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    original = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    shown = [shown_slice(viewer, pane) for pane in panel.panes]
    best = max(shown, key=lambda image: correlation(image, original))
    assert correlation(best, original) > 0.99  # the original pane, shown as the DICOM viewer does
    assert install_display(viewer).current_letters() == {"top": "A", "bottom": "P", "left": "R",
                                                         "right": "L"}
    left.contrast_limits = [0.0, 80.0]
    assert tuple(right.contrast_limits) == (0.0, 80.0)  # the two panes share one window
    panel.close_session()


def test_the_view_panel_names_the_window_an_image_opened_in(viewer):
    _, early = viewer.window.add_plugin_dock_widget(PLUGIN, "View")
    layer = open_file(viewer, get_testdata_file("CT_small.dcm"))
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)  # abdomen W 400 / L 40 HU
    assert early.preset.value == "abdomen"  # not the brain window it does not show
    install_display(viewer).state.preset = ""
    viewer.layers.clear()
    open_file(viewer, get_testdata_file("MR_small.dcm"))
    assert early.preset.value == PERCENTILE_PRESET
    viewer.window.remove_dock_widget("all")
    _, late = viewer.window.add_plugin_dock_widget(PLUGIN, "View")  # docked after the image opened
    assert late.preset.value == PERCENTILE_PRESET


def test_reader_study_panes_are_captioned_a_and_b_on_the_canvas(viewer, tmp_path):
    study = ct_study(tmp_path, "blinded_ab")
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Reader study")
    assert panel.open_session(study, "reader1")
    assert [caption_of(pane) for pane in panel.panes] == ["Image A", "Image B"]
    panel.close_session()
