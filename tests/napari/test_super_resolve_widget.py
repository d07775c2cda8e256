"""The Super-resolve widget in a real napari viewer under Xvfb: a tiny random autoencoder and a
tiny random SR UNet saved to files, real MR images (pydicom MR_small, the MNI152 crop)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from medvae_engine.data.degradation import degrade_volume
from medvae_engine.imaging.grid import axis_factors, block_affine
from medvae_engine.imaging.io import read_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.models.checkpoints import file_sha256
from medvae_engine.models.zoo import DEFAULT_SR, SR_MODELS
from medvae_engine.sr.unet import SRDenoiser, save_sr_model, unet_config
from napari_medvae._layers import layer_kind, volume_to_layer_data
from napari_medvae._session import CUSTOM, get_session
from napari_medvae._super_resolve import NO_SR_MODEL
from napari_medvae.widgets import MapsWidget, SuperResolveWidget
from napari_medvae.widgets.super_resolve import DEGRADE_HR, LR_INPUT

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def sr_model_path(tmp_path_factory, tiny_model_path):
    """A random x4 tiny SR UNet for the 1-channel tiny autoencoder, saved with a card."""
    torch.manual_seed(0)
    model = SRDenoiser(unet_config(1, "tiny"), "x0").eval()
    card = {"scale": 4, "autoencoder": str(tiny_model_path),
            "autoencoder_sha256": file_sha256(tiny_model_path),
            "degradation": {"kind": "bicubic", "scale": 4, "sigma": None}}
    return save_sr_model(model, tmp_path_factory.mktemp("sr") / "tiny_sr.safetensors", card)


@pytest.fixture(scope="module")
def flow_blur_model_path(tmp_path_factory):
    """A random flow-matching SR UNet trained (per its card) on the blur refinement task, s=2."""
    torch.manual_seed(1)
    model = SRDenoiser(unet_config(1, "tiny"), "flow").eval()
    card = {"scale": 1, "degradation": {"kind": "blur", "scale": 2, "sigma": None}}
    return save_sr_model(model, tmp_path_factory.mktemp("sr") / "flow_blur.safetensors", card)


@pytest.fixture(scope="module")
def mr_small():
    """The 64 x 64 pydicom MR slice with its real geometry (0.3125 mm pixels, flipped axes)."""
    return read_volume(get_testdata_file("MR_small.dcm"))


def crop(volume: Volume, rows: slice, cols: slice) -> Volume:
    """A 2D crop placed where it lies in the original image."""
    affine = volume.affine.copy()
    affine[:3, 3] += volume.affine[:3, :2] @ np.array([rows.start or 0, cols.start or 0])
    return Volume(volume.array[rows, cols], affine, volume.modality)


def add_volume(viewer, volume, name):
    data, attributes, _ = volume_to_layer_data(volume, name)
    return viewer.add_image(data, **attributes)


def sr_widget(viewer, layer, sr_path, tiny_model_path, **values) -> SuperResolveWidget:
    state = get_session(viewer).state
    state.choice, state.checkpoint = CUSTOM, str(tiny_model_path)
    widget = SuperResolveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    widget.layer.value = layer.name
    if sr_path is not None:
        widget.sr_model.value = sr_path
    values = {"sampler": "ddim", "steps": 2, **values}
    for key, value in values.items():
        getattr(widget, key).value = value
    return widget


def sr_layers(viewer):
    return [layer for layer in viewer.layers if layer_kind(layer) == "super-resolution"]


def assert_centres_consistent(lr_layer, sr_layer, s: int, in_plane=(0, 1)) -> None:
    """Each LR voxel centre is the mean of the world centres of the s x s HR voxels it becomes."""
    for index in [(0, 0), (3, 5), (lr_layer.data.shape[-2] - 1, 2)]:
        lead = (0,) * (lr_layer.ndim - 2)
        hr = [np.add(np.multiply(index, s), (a, b)) for a in range(s) for b in range(s)]
        centres = [sr_layer.data_to_world((*lead, *h)) for h in hr]
        np.testing.assert_allclose(np.mean(centres, axis=0), lr_layer.data_to_world((*lead, *index)),
                                   atol=1e-6)


def test_lr_image_gets_an_sr_layer_at_hr_spacing_with_provenance(viewer, sync_jobs, errors,
                                                                  mr_small, sr_model_path,
                                                                  tiny_model_path):
    lr = add_volume(viewer, crop(mr_small, slice(8, 40), slice(16, 48)), "mr")
    widget = sr_widget(viewer, lr, sr_model_path, tiny_model_path, seed=3)
    assert "x4" in widget.model_info.value and "tiny_f4" in widget.model_info.value
    widget.run_button.clicked.emit()
    assert not errors and widget.job.state.message == "done"
    (sr,) = sr_layers(viewer)
    assert sr.data.shape == (128, 128) and np.isfinite(sr.data).all() and np.ptp(sr.data) > 0
    np.testing.assert_allclose(sr.scale, np.asarray(lr.scale) / 4)
    assert_centres_consistent(lr, sr, 4)
    meta = sr.metadata["medvae"]
    assert meta["sr_model"] == str(sr_model_path)
    assert meta["sr_model_sha256"] == file_sha256(sr_model_path)
    assert (meta["sampler"], meta["steps"], meta["seed"], meta["scale"]) == ("ddim", 2, 3, 4)
    assert meta["model"] == "tiny_f4" and meta["weights_sha256"] == file_sha256(tiny_model_path)
    assert [layer_kind(layer) for layer in viewer.layers] == ["image", "super-resolution"]


def test_plain_napari_layer_and_a_volume_slice_axis(viewer, sync_jobs, errors, mri_crop,
                                                    sr_model_path, tiny_model_path):
    """A layer this plugin did not make (only scale/translate), 3D, sliced along axis 0."""
    lr = viewer.add_image(mri_crop.array[:3, :16, :20], scale=(2.0, 1.5, 0.75),
                          translate=(10.0, -4.0, 7.5), name="plain")
    widget = sr_widget(viewer, lr, sr_model_path, tiny_model_path, sampler="ddpm", steps=2)
    widget.run()
    assert not errors
    (sr,) = sr_layers(viewer)
    assert sr.data.shape == (3, 64, 80)
    np.testing.assert_allclose(sr.scale, (2.0, 1.5 / 4, 0.75 / 4))
    np.testing.assert_allclose(sr.translate[0], 10.0)  # the slice axis is untouched
    assert_centres_consistent(lr, sr, 4)


def test_same_seed_same_result_other_seed_differs(viewer, sync_jobs, mr_small, sr_model_path,
                                                  tiny_model_path):
    lr = add_volume(viewer, crop(mr_small, slice(0, 32), slice(0, 32)), "mr")
    widget = sr_widget(viewer, lr, sr_model_path, tiny_model_path, sampler="ddpm", steps=3,
                       seed=7)
    widget.run()
    widget.run()
    widget.seed.value = 8
    widget.run()
    first, again, other = (layer.data for layer in sr_layers(viewer))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 1e-3 * np.ptp(first)


def test_degraded_hr_adds_lr_sr_and_ae_layers_on_the_reference_grid(viewer, sync_jobs, errors,
                                                                     mr_small, sr_model_path,
                                                                     tiny_model_path):
    hr = add_volume(viewer, mr_small, "hr")
    widget = sr_widget(viewer, hr, sr_model_path, tiny_model_path, mode=DEGRADE_HR,
                       degradation="lanczos", factor=4)
    assert widget.reference.native.isHidden() and not widget.factor.native.isHidden()
    widget.run()
    assert not errors
    kinds = {layer_kind(layer): layer for layer in viewer.layers}
    assert set(kinds) == {"image", "low-resolution", "super-resolution", "reconstruction"}
    low, sr, ae = kinds["low-resolution"], kinds["super-resolution"], kinds["reconstruction"]
    assert low.data.shape == (16, 16) and sr.data.shape == ae.data.shape == hr.data.shape
    for layer in (sr, ae):
        np.testing.assert_allclose(layer.scale, hr.scale)
        np.testing.assert_allclose(layer.translate, hr.translate, atol=1e-9)
    assert_centres_consistent(low, sr, 4)
    assert sr.metadata["medvae"]["degradation"] == "lanczos /4"
    # the LR input really is the HR image degraded: its mean intensity is kept
    assert abs(low.data.mean() - hr.data.mean()) < 0.02 * np.ptp(hr.data)
    maps = MapsWidget(viewer)  # the AE layer serves as the noise floor of hallucination maps
    maps.reset_choices()
    maps.reference.value, maps.test.value, maps.ae.value = hr.name, sr.name, ae.name
    maps.compute()
    assert not errors and any("hallucination" in layer.name for layer in viewer.layers)


def test_hr_sides_not_divisible_get_a_cropped_reference(viewer, sync_jobs, errors, mr_small,
                                                        sr_model_path, tiny_model_path):
    hr = add_volume(viewer, crop(mr_small, slice(0, 34), slice(0, 30)), "hr")
    widget = sr_widget(viewer, hr, sr_model_path, tiny_model_path, mode=DEGRADE_HR, add_ae=False)
    widget.run()
    assert not errors
    kinds = {layer_kind(layer): layer for layer in viewer.layers}
    assert kinds["reference"].data.shape == kinds["super-resolution"].data.shape == (32, 28)
    np.testing.assert_array_equal(kinds["reference"].data, hr.data[:32, :28])
    np.testing.assert_allclose(kinds["super-resolution"].translate, hr.translate, atol=1e-9)
    assert "reconstruction" not in kinds


def test_missing_or_unfit_sr_model_is_a_notification_and_adds_nothing(viewer, sync_jobs, errors,
                                                                       mr_small, sr_model_path,
                                                                       tiny_model_path, tmp_path):
    lr = add_volume(viewer, crop(mr_small, slice(0, 16), slice(0, 16)), "mr")
    widget = sr_widget(viewer, lr, None, tiny_model_path)
    widget.sr_model.value = ""  # no file chosen
    assert widget.model_info.value == NO_SR_MODEL
    assert widget.run() is None
    assert errors == [NO_SR_MODEL] and "starter_sr_x4" in NO_SR_MODEL
    widget.sr_model.value = tmp_path / "missing.safetensors"
    widget.run()
    assert "SR model file not found" in errors[-1]
    widget.sr_model.value = sr_model_path
    widget.sampler.value = "flow"  # an x0 model cannot be sampled as a flow
    widget.run()
    assert "does not fit this SR model" in errors[-1]
    widget.sampler.value, widget.mode.value, widget.factor.value = "ddim", DEGRADE_HR, 2
    widget.run()
    assert "trained for x4, the degradation gives x2" in errors[-1]
    widget.mode.value, widget.autoencoder.value = LR_INPUT, "pixels"  # 1 channel, factor 1: runs
    widget.steps.value = 1
    widget.run()
    assert len(errors) == 4 and len(sr_layers(viewer)) == 1
    assert sr_layers(viewer)[0].metadata["medvae"]["model"] == "pixels"
    assert all("Traceback" not in e for e in errors)
    assert len(viewer.layers) == 2


def test_cancel_adds_nothing_then_a_run_completes_in_the_worker(viewer, async_jobs, qtbot,
                                                                errors, mri_crop, mr_small,
                                                                sr_model_path, tiny_model_path):
    lr = add_volume(viewer, mri_crop, "brain")
    widget = sr_widget(viewer, lr, sr_model_path, tiny_model_path, sampler="ddpm", steps=200)
    job = widget.run()
    qtbot.waitUntil(lambda: job.state.done >= 1, timeout=60_000)
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not job.state.running, timeout=60_000)
    qtbot.wait(200)
    assert job.state.message == "cancelled" and job.state.done < job.state.total
    assert [layer.name for layer in viewer.layers] == ["brain"] and not errors
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    small = add_volume(viewer, crop(mr_small, slice(0, 16), slice(0, 24)), "small")
    widget.layer.value, widget.steps.value = small.name, 2  # now run to the end in the worker
    job = widget.run()
    qtbot.waitUntil(lambda: not job.state.running, timeout=120_000)
    assert job.state.message == "done" and threading.get_ident() not in job.worker_thread
    assert [layer.data.shape for layer in sr_layers(viewer)] == [(64, 96)] and not errors


def test_lr_image_with_an_hr_reference_layer_adds_its_ae_reconstruction(viewer, sync_jobs, errors,
                                                                        mr_small, sr_model_path,
                                                                        tiny_model_path):
    hr = add_volume(viewer, mr_small, "hr")
    lr = add_volume(viewer, crop(mr_small, slice(0, 16), slice(0, 16)), "lr")
    wrong = add_volume(viewer, crop(mr_small, slice(0, 60), slice(0, 64)), "wrong")
    widget = sr_widget(viewer, lr, sr_model_path, tiny_model_path, steps=1)
    widget.reference.value = wrong.name
    widget.run()
    assert "reference shape (60, 64) differs from the SR output's (64, 64)" in errors[-1]
    assert len(viewer.layers) == 3
    widget.reference.value = hr.name
    widget.run()
    assert len(errors) == 1
    ae = next(layer for layer in viewer.layers if layer_kind(layer) == "reconstruction")
    assert ae.data.shape == hr.data.shape and ae.metadata["medvae"]["model"] == "tiny_f4"
    np.testing.assert_allclose(ae.translate, hr.translate)


def test_choosing_a_model_file_fits_sampler_and_degradation_blur_keeps_the_grid(
        viewer, sync_jobs, errors, mr_small, flow_blur_model_path, tiny_model_path):
    hr = add_volume(viewer, crop(mr_small, slice(0, 32), slice(0, 32)), "hr")
    widget = sr_widget(viewer, hr, None, tiny_model_path, mode=DEGRADE_HR, add_ae=False)
    widget.sr_model.value = flow_blur_model_path
    assert widget.sampler.value == "flow" and widget.steps.value == 16
    assert (widget.degradation.value, widget.factor.value) == ("blur", 2)
    assert "objective flow" in widget.model_info.value
    widget.steps.value = 2
    widget.run()
    assert not errors
    kinds = {layer_kind(layer): layer for layer in viewer.layers}
    low, sr = kinds["low-resolution"], kinds["super-resolution"]
    assert low.data.shape == sr.data.shape == hr.data.shape  # refinement: LR keeps the HR grid
    np.testing.assert_allclose(sr.scale, hr.scale)
    np.testing.assert_allclose(sr.translate, hr.translate)
    assert sr.metadata["medvae"]["scale"] == 1 and sr.metadata["medvae"]["sampler"] == "flow"
    assert np.abs(low.data - hr.data).mean() > 0  # blurred


def test_docks_from_the_plugin_manifest(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-medvae", "Super-resolve")
    assert isinstance(widget, SuperResolveWidget)
    viewer.add_image(np.zeros((8, 8), np.float32), name="new")
    assert list(widget.layer.choices) == ["new"]
    assert widget.status.value == "idle" and widget.model_info.value.startswith(
        "starter_sr_x4.safetensors: x4")  # the shipped starter is preselected


def test_degraded_volume_affine_is_what_sr_inverts(mri_crop):
    """Rotated 3D geometry, slice axis 1: SR of the LR grid lands exactly on the HR reference."""
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * [0.7, 2.0, 1.1]
    affine[:3, 3] = rng.normal(size=3) * 20
    coarse = block_affine(affine, axis_factors(3, (0, 2), 3))
    np.testing.assert_allclose(block_affine(coarse, axis_factors(3, (0, 2), 1 / 3)), affine)
    hr = Volume(mri_crop.array[:30, :5, :34], affine, "mri")
    lr, reference = degrade_volume(hr, "bicubic", 4, axis=1)
    assert lr.shape == (7, 5, 8) and reference.shape == (28, 5, 32)
    np.testing.assert_allclose(block_affine(lr.affine, [1 / 4, 1, 1 / 4]), hr.affine)
    np.testing.assert_allclose(lr.array.mean(), reference.array.mean(),
                               rtol=0.05)  # a smoothing downsample keeps the mean



def test_the_shipped_starter_sr_model_is_preselected_with_its_own_autoencoder(viewer, sync_jobs,
                                                                             errors, mr_small,
                                                                             tiny_model_path):
    starter = SR_MODELS[DEFAULT_SR]
    lr = add_volume(viewer, crop(mr_small, slice(8, 24), slice(16, 32)), "mr")
    widget = sr_widget(viewer, lr, None, tiny_model_path, steps=2)
    assert widget._sr_path() == str(starter.local_path())
    assert "x4" in widget.model_info.value and starter.autoencoder in widget.model_info.value
    widget.run_button.clicked.emit()
    assert not errors and widget.job.state.message == "done"
    (sr,) = sr_layers(viewer)
    assert sr.data.shape == (64, 64) and np.isfinite(sr.data).all() and np.ptp(sr.data) > 0
    meta = sr.metadata["medvae"]
    assert meta["model"] == starter.autoencoder and meta["sr_model_sha256"] == starter.sha256


def test_samples_add_the_mean_and_an_uncertainty_overlay_with_a_colour_bar(
        viewer, sync_jobs, errors, mr_small, sr_model_path, tiny_model_path):
    """samples = 3, docked from the manifest: the SR layer is the mean of the seeds 2, 3, 4 and an
    overlay holds their per-voxel SD (ddof 1) with its colour bar shown and units named; both
    are compared with three single-sample runs of the same panel."""
    lr = add_volume(viewer, crop(mr_small, slice(8, 40), slice(16, 48)), "mr")
    state = get_session(viewer).state
    state.choice, state.checkpoint = CUSTOM, str(tiny_model_path)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medvae", "Super-resolve")
    widget.reset_choices()
    widget.layer.value = lr.name
    widget.sr_model.value = sr_model_path
    widget.steps.value = 2
    singles = []
    for seed in (2, 3, 4):
        widget.seed.value = seed
        widget.run()
        singles.append(sr_layers(viewer)[-1].data.astype(np.float64))
    widget.seed.value, widget.samples.value = 2, 3
    widget.run()
    assert not errors
    mean = sr_layers(viewer)[-1]
    (sd,) = [layer for layer in viewer.layers if layer_kind(layer) == "uncertainty"]
    np.testing.assert_allclose(mean.data, np.mean(singles, 0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(sd.data, np.std(singles, 0, ddof=1), rtol=1e-4, atol=1e-3)
    assert sd.data.max() > 0
    assert sd.colorbar.visible and not mean.colorbar.visible
    assert "SD over 3 samples" in sd.name and "intensity units" in sd.name
    assert "units" in sd.metadata["medvae"] and sd.metadata["medvae"]["samples"] == 3
    np.testing.assert_allclose(sd.scale, mean.scale)
    np.testing.assert_allclose(sd.translate, mean.translate)
    assert sd.blending == "additive" and sd.colormap.name == "magma"
