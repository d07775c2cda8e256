"""The npe2 manifest is discovered and its reader, writer and samples work through napari itself."""

from __future__ import annotations

import numpy as np
import pytest
from npe2 import PluginManager

from medvae_engine.imaging.io import read_volume, write_volume
from napari_medvae._layers import display_geometry
from napari_medvae._sample_data import SAMPLES


def test_manifest_is_discovered_with_every_contribution():
    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-medvae")
    contributions = manifest.contributions
    assert {s.key for s in contributions.sample_data} == set(SAMPLES)
    assert {w.display_name for w in contributions.widgets} == {
        "Model", "Encode / Reconstruct", "Super-resolve", "Maps", "Compare", "Reader study",
        "View"}
    assert len(contributions.readers) == 1 and len(contributions.writers) == 3
    assert contributions.menus


def test_every_menu_is_one_napari_lets_plugins_contribute_to():
    """napari silently drops items in a menu that is not contributable (e.g. napari/plugins)."""
    from napari._app_model.constants._menus import is_menu_contributable

    manager = PluginManager.instance()
    manager.discover()
    menus = manager.get_manifest("napari-medvae").contributions.menus
    assert [menu for menu in menus if not is_menu_contributable(menu)] == []
    widgets = {w.command for w in manager.get_manifest("napari-medvae").contributions.widgets}
    assert {item.command for items in menus.values() for item in items} <= widgets


@pytest.mark.gui
def test_open_sample_save_and_reopen_through_napari(viewer, tmp_path):
    viewer.open_sample("napari-medvae", "mr_shoulder")
    layer = viewer.layers[-1]
    source = read_volume(layer.metadata["medvae"]["source_path"])
    scale, translate = display_geometry(source.affine, 2)
    np.testing.assert_allclose(layer.scale, scale)
    np.testing.assert_allclose(layer.translate, translate)
    path = tmp_path / "saved.nii.gz"
    viewer.layers.save(str(path), selected=False, plugin="napari-medvae")
    np.testing.assert_allclose(read_volume(path).affine, source.affine, atol=1e-5)
    reopened = viewer.open(str(path), plugin="napari-medvae")[0]
    np.testing.assert_allclose(reopened.translate, layer.translate, atol=1e-5)
    np.testing.assert_array_equal(reopened.data, layer.data)


@pytest.mark.gui
def test_open_mha_keeps_spacing_and_origin(viewer, tmp_path, mri_crop):
    path = write_volume(mri_crop, tmp_path / "crop.mha")
    layer = viewer.open(str(path), plugin="napari-medvae")[0]
    volume = read_volume(path)
    np.testing.assert_allclose(layer.scale, volume.spacing)
    np.testing.assert_allclose(layer.translate, display_geometry(volume.affine, 3)[1])
    assert layer.data.shape == mri_crop.shape
