"""Official weights from the Model panel (download from a mocked hub, Open weights file...), their
sha256 on every result layer, model loads off the Qt thread and cancel inside a window. Widgets are
docked from the plugin manifest as napari docks them; nothing touches the network."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medvae_engine.runtime.progress import run
from napari_medvae import _session
from napari_medvae._layers import META_KEY, layer_kind, volume_to_layer_data
from napari_medvae._session import CUSTOM, NOT_AVAILABLE, get_session
from napari_medvae.widgets import model_panel
from napari_medvae.widgets import super_resolve as sr_widget_module

pytestmark = pytest.mark.gui


def dock(viewer, name: str):
    return viewer.window.add_plugin_dock_widget("napari-medvae", name)[1]


def choice_text(widget, value: str) -> str:
    """The text the model combo box shows for ``value``."""
    combo = widget.model_choice.native
    return combo.itemText([combo.itemData(i) for i in range(combo.count())].index(value))


@pytest.fixture
def small_checkpoint(tmp_path, small_official, write_official_checkpoint) -> Path:
    return write_official_checkpoint(tmp_path / "from_a_usb_stick.ckpt")


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_download_button_fetches_the_weights_with_progress(viewer, sync_jobs, small_official,
                                                           fake_hub, small_checkpoint):
    fake_hub.files[small_official.hub_file] = small_checkpoint.read_bytes()
    panel = dock(viewer, "Model")
    panel.model_choice.value = small_official.name
    assert f"weights: {NOT_AVAILABLE}" in panel.weights.value
    assert NOT_AVAILABLE in choice_text(panel, small_official.name)
    assert not panel.download_button.native.isHidden() and panel.download_button.enabled
    panel.download_button.clicked.emit()
    mib = -(-small_checkpoint.stat().st_size // 2**20)
    assert panel.job.state.message == "done" and panel.job_state.total == mib > 1
    assert panel.job_state.done == mib
    assert panel.weights.value == f"weights: on this machine ({small_official.local_path()})"
    assert NOT_AVAILABLE not in choice_text(panel, small_official.name)
    assert not panel.download_button.enabled
    assert sha256_of(small_official.local_path()) == sha256_of(small_checkpoint)


def test_offline_download_is_a_notification_naming_the_file_and_where_to_put_it(
        viewer, sync_jobs, small_official, fake_hub, errors):
    fake_hub.offline = True
    panel = dock(viewer, "Model")
    panel.model_choice.value = small_official.name
    panel.download_button.clicked.emit()
    assert panel.job.state.message == "failed" and len(errors) == 1
    assert small_official.hub_file in errors[0]
    assert f"put it in {small_official.local_path().parent} as {small_official.filename}" in errors[0]
    assert f"weights: {NOT_AVAILABLE}" in panel.weights.value and panel.download_button.enabled


def test_open_weights_file_registers_and_every_result_carries_its_sha256(
        viewer, sync_jobs, small_official, small_checkpoint, mri_crop, monkeypatch, errors):
    monkeypatch.setattr(model_panel.QFileDialog, "getOpenFileName",
                        lambda *args: (str(small_checkpoint), model_panel.WEIGHTS_FILTER))
    panel = dock(viewer, "Model")
    panel.model_choice.value = small_official.name
    panel.open_weights_button.clicked.emit()
    assert errors == [] and panel.job.state.message == "done"
    assert panel.weights.value == f"weights: on this machine ({small_official.local_path()})"
    session = get_session(viewer)
    assert session.model is not None and session.model.name == small_official.name
    expected = sha256_of(small_checkpoint)

    data, attributes, _ = volume_to_layer_data(mri_crop, "brain")
    viewer.add_image(data, **attributes)
    encode = dock(viewer, "Encode / Reconstruct")
    encode.layer.value = "brain"
    encode.run(latent=True, recon=True)
    encode.preview()
    maps = dock(viewer, "Maps")
    maps.reference.value = "brain"
    assert errors == [], errors
    maps.test.value = next(layer.name for layer in viewer.layers
                           if layer_kind(layer) == "reconstruction")
    maps.compute()
    results = [layer for layer in viewer.layers if layer.name != "brain"]
    kinds = {layer_kind(layer) for layer in results}
    assert {"latent", "reconstruction", "preview", "map"} <= kinds, kinds
    for layer in results:
        assert layer.metadata[META_KEY]["weights_sha256"] == expected, layer.name


@pytest.mark.parametrize("wrong", ["dicom", "3d checkpoint"])
def test_a_wrong_weights_file_is_a_clear_notification(viewer, sync_jobs, small_official,
                                                      tiny_model_path, errors, wrong):
    path = get_testdata_file("CT_small.dcm") if wrong == "dicom" else str(tiny_model_path)
    panel = dock(viewer, "Model")
    panel.model_choice.value = small_official.name
    panel.open_weights(path)
    assert len(errors) == 1 and errors[0].startswith(str(path))
    problem = "not a readable checkpoint" if wrong == "dicom" else "does not match the model"
    assert problem in errors[0]
    assert not small_official.available and f"weights: {NOT_AVAILABLE}" in panel.weights.value


@pytest.fixture
def loads_recorded(monkeypatch):
    """The threads in which model weights are loaded (the engine's loader, wrapped)."""
    threads: list[int] = []
    real = _session.load_codec_steps

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(_session, "load_codec_steps", recording)
    monkeypatch.setattr(sr_widget_module, "load_codec_steps", recording)
    return threads


def test_no_model_loads_on_the_qt_thread(viewer, async_jobs, qtbot, mri_crop, tiny_model_path,
                                         loads_recorded, errors):
    main = threading.get_ident()
    data, attributes, _ = volume_to_layer_data(mri_crop, "brain")
    viewer.add_image(data, **attributes)
    state = get_session(viewer).state
    state.choice, state.checkpoint = CUSTOM, str(tiny_model_path)
    encode = dock(viewer, "Encode / Reconstruct")
    encode.layer.value = "brain"
    for start in (encode.preview, lambda: encode.run(latent=True, recon=False)):
        get_session(viewer).model = None  # load again for each job
        job = start()
        qtbot.waitUntil(lambda job=job: not job.state.running, timeout=120_000)
        assert job.state.message == "done"
    sr = dock(viewer, "Super-resolve")  # the shipped starter SR model with its own autoencoder
    sr.layer.value = "brain"
    sr.axis.value = 0
    sr.steps.value = 1
    job = sr.run()
    qtbot.waitUntil(lambda: not job.state.running, timeout=120_000)
    assert errors == [] and job.state.message == "done"
    panel = dock(viewer, "Model")
    job = panel.load()
    qtbot.waitUntil(lambda: not job.state.running, timeout=120_000)
    assert job.state.message == "done"
    assert len(loads_recorded) == 4 and main not in loads_recorded


def test_cancel_during_a_window_stops_inside_it(viewer, async_jobs, qtbot, mri_crop,
                                                tiny_model_path):
    """32 slices in batches of 8 are 4 windows; Cancel pressed while window 1 runs stops it
    before the encoder's last module, so exactly one window started and none finished."""
    data, attributes, _ = volume_to_layer_data(mri_crop, "brain")
    viewer.add_image(data, **attributes)
    session = get_session(viewer)
    session.state.choice, session.state.checkpoint = CUSTOM, str(tiny_model_path)
    model = run(session.model_steps())
    windows, finished = [], []
    started, pressed = threading.Event(), threading.Event()
    real_encode = model.encode

    def encode(x, **kwargs):
        windows.append(x.shape[0])
        if len(windows) == 1:
            started.set()
            pressed.wait(30)
        return real_encode(x, **kwargs)

    model.encode = encode
    model.encoder.conv_out.register_forward_hook(lambda *_: finished.append(1))
    widget = dock(viewer, "Encode / Reconstruct")
    widget.layer.value = "brain"
    before = [layer.name for layer in viewer.layers]
    job = widget.run(latent=True, recon=True)
    qtbot.waitUntil(started.is_set, timeout=60_000)
    widget.cancel_button.clicked.emit()
    pressed.set()
    qtbot.waitUntil(lambda: not job.state.running, timeout=60_000)
    assert job.state.message == "cancelled" and windows == [8] and finished == []
    assert [layer.name for layer in viewer.layers] == before
