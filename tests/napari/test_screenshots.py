"""The README's screenshots (`make screenshots`) made by the real plugin in a shown viewer: a head CT
axial in its soft-tissue window, the captioned compare grid with colour bars, the reader-study panel.

Each PNG is checked against what should be on screen, not only for existing."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from imageio.v3 import imread
from pydicom.data import get_testdata_file

from napari_medvae.screenshots import CT_FILE, write_readme_screenshots

pytestmark = pytest.mark.gui

MAX_BYTES = 400_000
AXIAL_LETTERS = {"top": "A", "bottom": "P", "left": "R", "right": "L"}


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shots")


@pytest.fixture
def shots(viewer, shots_dir):
    return write_readme_screenshots(shots_dir, viewer=viewer)


def canvas_pixels(record: dict) -> np.ndarray:
    """The canvas region of a window screenshot, as a float grey image."""
    pixels = imread(record["path"])[..., :3].astype(np.float64)
    top, left, height, width = record["canvas"]
    return pixels[top:top + height, left:left + width].mean(axis=2)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def shown_image(record: dict, size: tuple[int, int]) -> np.ndarray:
    """The layer's on-screen box (world extent through the camera) sampled at ``size`` points."""
    canvas = canvas_pixels(record)
    (y0, x0), (y1, x1) = np.asarray(record["extent"])[:, -2:]
    center, zoom = np.asarray(record["camera"]["center"]), record["camera"]["zoom"]
    half = np.asarray(canvas.shape) / 2
    rows = (np.linspace(y0, y1, size[0], endpoint=False) + (y1 - y0) / size[0] / 2 - center[0]) * zoom
    cols = (np.linspace(x0, x1, size[1], endpoint=False) + (x1 - x0) / size[1] / 2 - center[1]) * zoom
    rows = np.clip(np.round(rows + half[0]).astype(int), 0, canvas.shape[0] - 1)
    cols = np.clip(np.round(cols + half[1]).astype(int), 0, canvas.shape[1] - 1)
    return canvas[np.ix_(rows, cols)]


def test_readme_screenshots_show_what_a_radiologist_expects(shots):
    for record in shots.values():
        assert record["path"].stat().st_size < MAX_BYTES
        height, width = imread(record["path"]).shape[:2]
        assert width == 1280 and 780 <= height <= 1080

    # 1. the head CT, axial, in the soft-tissue window W 400 / L 40 HU = -160..240 HU
    ct = shots["ct"]
    assert ct["contrast_limits"] == [-160.0, 240.0]
    assert ct["letters"] == AXIAL_LETTERS and ct["scale_bar"]
    assert canvas_pixels(ct).std() > 30  # an image, not a blank canvas
    # independent reference: what a DICOM viewer shows (rows down, columns right for this axial
    # header) in that window, from pydicom's own pixel data
    dataset = pydicom.dcmread(get_testdata_file(CT_FILE))
    hu = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    expected = np.clip((hu + 160.0) / 400.0, 0, 1) * 255
    shown = shown_image(ct, expected.shape)
    variants = {"as stored": expected, "left-right": expected[:, ::-1], "up-down": expected[::-1],
                "transposed": expected.T}
    scores = {name: correlation(shown, image) for name, image in variants.items()}
    assert scores["as stored"] > 0.95 and max(scores, key=scores.get) == "as stored", scores

    # 2. the compare grid: four captioned panels, the two maps with colour bars
    grid = shots["compare"]
    assert grid["grid"] == [2, 2]
    original, recon, difference, error = grid["captions"]
    assert original == "Original: CT_small"
    assert recon.startswith("Reconstruction: starter_4_1_2d") and "PSNR" in recon and "dB" in recon
    assert difference.startswith("difference [HU]") and error.startswith("abs_error [HU]")
    assert grid["colorbars"] == [False, False, True, True]
    pixels = imread(grid["path"])[..., :3].astype(int)
    top, left, height, width = grid["canvas"]
    canvas = pixels[top:top + height, left:left + width]
    bottom_left = canvas[height // 2:, : width // 2]
    bottom_right = canvas[height // 2:, width // 2:]
    assert ((bottom_left[..., 2] - bottom_left[..., 0]) > 100).sum() > 200  # blue: negative HU
    assert ((bottom_left[..., 0] - bottom_left[..., 2]) > 100).sum() > 200  # red: positive HU
    assert ((bottom_right[..., 0] > 200) & (bottom_right[..., 1] > 200)
            & (bottom_right[..., 2] < 120)).sum() > 100  # the inferno colour bar's yellow end
    gray = canvas[: height // 2].std(axis=2).mean()
    assert gray < 5  # the top row (original, reconstruction) is grey-scale

    # 3. the reader study: two blinded panes of one case side by side, first item, first answer
    study = shots["study"]
    assert study["panes"] == ["A", "B"] and study["grid"] == [1, 2] and study["grid_enabled"]
    assert study["position"].startswith("Item 1 of 2")
    canvas = canvas_pixels(study)
    left_pane, right_pane = canvas[:, : canvas.shape[1] // 2], canvas[:, canvas.shape[1] // 2:]
    width = min(left_pane.shape[1], right_pane.shape[1])
    assert left_pane.std() > 30 and right_pane.std() > 30
    assert 0.7 < correlation(left_pane[:, :width], right_pane[:, :width]) < 0.999
