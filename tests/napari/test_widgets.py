"""Each widget end to end in a real napari viewer under Xvfb, on small real volumes."""

from __future__ import annotations

import numpy as np
import pytest

from medvae_engine.models import list_models
from napari_medvae._layers import layer_kind, volume_to_layer_data
from napari_medvae._session import CUSTOM, NOT_AVAILABLE, get_session, model_choices
from napari_medvae.widgets import CompareWidget, EncodeWidget, MapsWidget, ModelWidget
from napari_medvae.widgets._common import grid_of

pytestmark = pytest.mark.gui


def add_volume(viewer, volume, name="brain"):
    data, attributes, _ = volume_to_layer_data(volume, name)
    return viewer.add_image(data, **attributes)


def use_model(viewer, path) -> None:
    state = get_session(viewer).state
    state.choice, state.checkpoint = CUSTOM, str(path)


def reconstruct(viewer, volume, model_path):
    image = add_volume(viewer, volume)
    use_model(viewer, model_path)
    widget = EncodeWidget(viewer)
    widget.layer.value = image.name
    widget.run(latent=True, recon=True)
    return image, widget


def test_model_widget_lists_starters_and_summarises_a_checkpoint(viewer, sync_jobs, mri_crop,
                                                                 tiny_model_path):
    widget = ModelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    labels = [label for label, _ in model_choices()]
    assert list(widget.model_choice.choices) == [value for _, value in model_choices()]
    for record in list_models():
        label = next(text for text in labels if text.startswith(record["name"] + ":"))
        assert (NOT_AVAILABLE in label) == (not record["available"])
    add_volume(viewer, mri_crop)
    widget.model_choice.value = CUSTOM
    widget.checkpoint.value = tiny_model_path
    widget.load()
    summary = widget.summary.value
    assert "factor 4" in summary and "compression 16x" in summary
    # axial display: napari slices the crop's S-I voxel axis (the last one of an RAS volume)
    assert f"latent shape (1, 8, 10, {mri_crop.shape[2]})" in summary


def test_reconstruct_adds_aligned_latent_and_reconstruction(viewer, sync_jobs, mri_crop,
                                                            tiny_model_path):
    image, widget = reconstruct(viewer, mri_crop, tiny_model_path)
    latent = viewer.layers[f"{image.name} latent"]
    recon = next(layer for layer in viewer.layers if layer_kind(layer) == "reconstruction")
    axis = 2  # axial display: napari slices the RAS volume's S-I axis
    factors = np.array([1 if i == axis else 4 for i in range(3)])
    np.testing.assert_allclose(latent.scale, np.asarray(image.scale) * factors)
    np.testing.assert_allclose(latent.translate,
                               np.asarray(image.translate) + np.asarray(image.scale) * (factors - 1) / 2)
    np.testing.assert_allclose(recon.scale, image.scale)
    np.testing.assert_allclose(recon.translate, image.translate)
    assert recon.data.shape == image.data.shape and np.ptp(recon.data) > 0
    meta = recon.metadata["medvae"]
    assert meta["factor"] == 4 and meta["model"] == "tiny_f4" and len(meta["weights_sha256"]) == 64
    # the latent's voxel centre (0, 0, 0) lies at the centre of the image block it encodes
    world = latent.data_to_world((0, 0, 0))
    np.testing.assert_allclose(image.world_to_data(world), (factors - 1) / 2, atol=1e-6)


def test_refine_steps_fit_the_reconstruction_closer_as_the_engine_does(viewer, sync_jobs, mri_crop,
                                                                         tiny_model_path):
    """The panel's refine steps give the engine's refined reconstruction (same options), closer to
    the image than the one-pass one, and say so in the layer name, metadata and compare caption."""
    from medvae_engine.codec.pipeline import CodecOptions
    from medvae_engine.codec.pipeline import reconstruct as engine_reconstruct
    from medvae_engine.models import load_model
    from napari_medvae._compare import panel_caption

    image, widget = reconstruct(viewer, mri_crop, tiny_model_path)
    widget.refine.value = 5
    widget.run(latent=True, recon=True)
    one_pass, refined = [layer for layer in viewer.layers if layer_kind(layer) == "reconstruction"]
    assert "refine" not in one_pass.name and refined.name.endswith(", refine 5)")
    meta = refined.metadata["medvae"]
    assert meta["refine"] == 5 and one_pass.metadata["medvae"]["refine"] == 0
    assert panel_caption(refined.name, meta).endswith(", refine 5")
    options = CodecOptions(axis=2, precision=get_session(viewer).state.precision, refine=5)
    expected = engine_reconstruct(mri_crop, load_model(str(tiny_model_path)), options).array
    np.testing.assert_array_equal(refined.data, expected)
    original = image.data.astype(np.float64)
    assert (np.mean((refined.data - original) ** 2)
            < 0.95 * np.mean((one_pass.data - original) ** 2))


def test_unticking_the_learned_refiner_encodes_as_no_refiner_does(viewer, sync_jobs, mri_crop,
                                                                  tmp_path):
    """With a 3D model that has a learned refiner, the ticked box gives the engine's default
    reconstruction and the unticked one the engine's `refiner=False` one; the layer name, its
    metadata and the compare caption say which."""
    import torch

    from medvae_engine.codec.pipeline import CodecOptions
    from medvae_engine.codec.pipeline import reconstruct as engine_reconstruct
    from medvae_engine.models import load_model
    from medvae_engine.models.autoencoder import AutoencoderKL
    from medvae_engine.models.checkpoints import save_model
    from napari_medvae._compare import panel_caption

    torch.manual_seed(1)
    model = AutoencoderKL(3, 1, 1, 8, (1, 2, 4), 1, 1, norm_groups=4, shortcut=True,
                          refiner_steps=2)
    with torch.no_grad():  # the shortcut zeroes the image output layer: give it a nonlinear part
        model.decoder.conv_out.weight.normal_(0, 0.05)  # (a new refiner's sign steps then help)
    path = save_model(model, tmp_path / "tiny3d.safetensors")
    image, widget = reconstruct(viewer, mri_crop, path)
    widget.refiner.value = False
    widget.run(latent=True, recon=True)
    ticked, unticked = [layer for layer in viewer.layers if layer_kind(layer) == "reconstruction"]
    assert "no refiner" not in ticked.name and unticked.name.endswith(", no refiner)")
    assert ticked.metadata["medvae"]["refiner"] is True
    assert panel_caption(unticked.name, unticked.metadata["medvae"]).endswith(", no refiner")
    precision = get_session(viewer).state.precision
    for layer, refiner in [(ticked, True), (unticked, False)]:
        options = CodecOptions(precision=precision, refiner=refiner)
        expected = engine_reconstruct(mri_crop, load_model(str(path)), options).array
        np.testing.assert_array_equal(layer.data, expected)
    original = image.data.astype(np.float64)
    assert np.mean((ticked.data - original) ** 2) < np.mean((unticked.data - original) ** 2)


def test_preview_reconstructs_the_slice_on_screen(viewer, sync_jobs, mri_crop, tiny_model_path):
    image = add_volume(viewer, mri_crop)
    use_model(viewer, tiny_model_path)
    widget = EncodeWidget(viewer)  # docking a panel shows the axial view: slices along axis 2
    assert tuple(viewer.dims.order) == (2, 1, 0)
    viewer.dims.set_point(2, image.data_to_world((0, 0, 7))[2])  # voxel slice 7 (S-I is flipped)
    widget.layer.value = image.name
    widget.preview()
    preview = viewer.layers[f"{image.name} preview"]
    assert preview.data.shape == (*mri_crop.shape[:2], 1)
    np.testing.assert_allclose(preview.translate[2], image.translate[2] + 7 * image.scale[2])
    widget.preview()  # a second preview replaces the first
    assert sum(layer_kind(layer) == "preview" for layer in viewer.layers) == 1
    widget.run(latent=True, recon=False)  # Encode only: just the latent layer
    assert [layer_kind(layer) for layer in viewer.layers] == ["image", "preview", "latent"]
    assert viewer.layers[-1].data.shape == (8, 10, 36)  # 2D model on axial slices


def test_maps_and_metrics(viewer, sync_jobs, mri_crop):
    image = add_volume(viewer, mri_crop)
    rng = np.random.default_rng(0)
    add_volume(viewer, mri_crop.with_array(mri_crop.array + rng.normal(0, 3, mri_crop.shape)), "ae")
    sr = mri_crop.array + rng.normal(0, 3, mri_crop.shape)
    sr[10:14, 5:10, 5:10] += 120.0  # invented structure
    sr[20:24, 20:25, 20:25] -= 120.0  # removed structure
    add_volume(viewer, mri_crop.with_array(sr), "sr")
    widget = MapsWidget(viewer)
    widget.reset_choices()
    widget.reference.value, widget.test.value, widget.ae.value = image.name, "sr", "ae"
    widget.subbands.value = ["HH1", "LL3"]
    widget.compute()
    made = {layer.name.split(" ")[0]: layer for layer in viewer.layers if "vs" in layer.name}
    assert set(made) == {"difference", "abs_error", "subband_HH1", "subband_LL3", "hallucination"}
    diff = made["difference"]
    assert diff.contrast_limits[0] == -diff.contrast_limits[1] < 0  # centred on 0
    zero, low, high = diff.colormap.map([0.5, 0.0, 1.0])
    assert zero[3] == 0 and low[2] > low[0] and high[0] > high[2]  # clear at 0, blue < 0 < red
    np.testing.assert_allclose(diff.data, sr - mri_crop.array, atol=1e-3)
    np.testing.assert_allclose(diff.scale, image.scale)
    labels = made["hallucination"].data
    assert (labels[10:14, 5:10, 5:10] == 1).all() and (labels[20:24, 20:25, 20:25] == 2).all()
    assert (labels > 0).mean() < 0.05 and diff.blending == "translucent"
    widget.opacity.value = 0.3
    assert made["abs_error"].opacity == pytest.approx(0.3)
    shapes = viewer.add_shapes([[[5, 2, 2], [5, 2, 20], [5, 20, 20], [5, 20, 2]]],
                               shape_type="rectangle", scale=image.scale, translate=image.translate)
    widget.reset_choices()
    widget.region.value = shapes.name
    widget.measure()
    rows = widget.metrics.rows
    assert set(rows) == {"slice", "volume", "region"}
    for values in rows.values():
        assert 10 < values["PSNR dB"] < 60 and 0 < values["SSIM"] < 1
        assert 0 <= values["hallucinated %"] <= 100
    assert "PSNR" in widget.readout.value and len(widget.metrics.subbands) == 10


def test_compare_grid_screenshot_shows_coloured_map_where_images_differ(viewer, sync_jobs, mri_crop,
                                                                       tiny_model_path, tmp_path):
    image, _ = reconstruct(viewer, mri_crop, tiny_model_path)
    recon = next(layer for layer in viewer.layers if layer_kind(layer) == "reconstruction")
    maps = MapsWidget(viewer)
    maps.reset_choices()
    maps.reference.value, maps.test.value = image.name, recon.name
    maps.opacity.value = 0.8
    maps.compute()
    diff = next(layer for layer in viewer.layers if layer.name.startswith("difference"))
    compare = CompareWidget(viewer)
    viewer.window.add_dock_widget(compare)
    compare.link.value = True
    compare.apply(2, [(image.name, ""), (recon.name, diff.name)])
    assert grid_of(viewer).enabled and tuple(grid_of(viewer).shape) == (1, 2) and grid_of(viewer).stride == 2
    assert [layer.name for layer in viewer.layers if layer.visible] == [image.name, recon.name, diff.name]
    assert recon.contrast_limits == image.contrast_limits
    image.contrast_limits = (10.0, 200.0)
    assert tuple(recon.contrast_limits) == (10.0, 200.0)
    path = compare.screenshot(tmp_path / "grid.png")
    from imageio.v3 import imread

    shot = imread(path)[..., :3].astype(int)
    colour = (np.abs(shot[..., 0] - shot[..., 2]) > 40)
    half = shot.shape[1] // 2
    assert colour[:, half:].sum() > 200  # the map over the reconstruction is coloured
    assert colour[:, :half].sum() < 0.01 * colour[:, half:].sum()  # the plain image is grey
    assert shot[:, :half].max() > 50  # and not empty
    compare.grid_off()
    assert not grid_of(viewer).enabled and all(layer.visible for layer in viewer.layers)


def test_errors_become_notifications(viewer, sync_jobs, tmp_path, errors, mri_crop, tiny_model_path,
                                     monkeypatch):
    monkeypatch.setenv("MEDVAE_HOME", str(tmp_path / "empty_cache"))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"garbage")
    viewer.open(str(bad), plugin="napari-medvae")
    assert any("broken.nii.gz" in message for message in errors)
    rgb = viewer.add_image(np.zeros((16, 16, 3), np.uint8), rgb=True, name="photo")
    use_model(viewer, tiny_model_path)
    widget = EncodeWidget(viewer)
    widget.layer.value = rgb.name
    n_layers = len(viewer.layers)
    widget.run()
    assert any("RGB" in message for message in errors) and len(viewer.layers) == n_layers
    add_volume(viewer, mri_crop)
    maps = MapsWidget(viewer)
    maps.reset_choices()
    maps.reference.value, maps.test.value = "brain", "photo"
    maps.compute()
    assert len(viewer.layers) == n_layers + 1 and len(errors) == 3
    panel = ModelWidget(viewer)
    panel.model_choice.value = "medvae_4_1_2d"  # official weights are not in the test cache
    get_session(viewer).state.checkpoint = ""
    panel.load()
    assert "vae_4x_1c_2D.ckpt" in errors[-1] and get_session(viewer).model is None
