"""Whole-volume work runs in a thread worker: the GUI keeps ticking, Cancel leaves no layers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from medvae_engine.errors import InputError
from medvae_engine.imaging.volume import Volume
from medvae_engine.runtime.progress import Progress
from napari_medvae._layers import volume_to_layer_data
from napari_medvae._session import CUSTOM, get_session
from napari_medvae._threading import JobState, start_job
from napari_medvae.widgets import EncodeWidget

pytestmark = pytest.mark.gui
HEARTBEAT_MS = 20


def encode_widget(viewer, volume, model_path):
    data, attributes, _ = volume_to_layer_data(volume, "brain")
    viewer.add_image(data, **attributes)
    state = get_session(viewer).state
    state.choice, state.checkpoint = CUSTOM, str(model_path)
    widget = EncodeWidget(viewer)
    widget.layer.value = "brain"
    return widget


@pytest.fixture
def deep_crop(mri_crop):
    """Twice as many slices as the shared crop, so the encode takes a few seconds."""
    array = np.concatenate([mri_crop.array, mri_crop.array[::-1]])
    return Volume(array, mri_crop.affine, mri_crop.modality, dict(mri_crop.metadata))


def test_whole_volume_reconstruct_runs_off_the_gui_thread(viewer, async_jobs, qtbot, deep_crop,
                                                          tiny_model_path):
    widget = encode_widget(viewer, deep_crop, tiny_model_path)
    widget.session.ensure_model()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    job = widget.run(latent=True, recon=True)
    assert job.state.running  # returned at once, the work goes on in the background
    qtbot.waitUntil(lambda: not job.state.running, timeout=180_000)
    elapsed = time.perf_counter() - start
    timer.stop()
    assert job.worker_thread and threading.main_thread().ident not in job.worker_thread
    assert job.state.message == "done" and any(layer.name == "brain latent" for layer in viewer.layers)
    expected = elapsed * 1000 / HEARTBEAT_MS
    assert len(ticks) > 0.25 * expected, (len(ticks), expected)
    print(f"heartbeats {len(ticks)}/{expected:.0f}, longest stall {np.diff(ticks).max() * 1000:.0f} ms")


def test_cancel_stops_work_and_adds_nothing(viewer, async_jobs, qtbot, deep_crop, tiny_model_path):
    widget = encode_widget(viewer, deep_crop, tiny_model_path)
    before = [layer.name for layer in viewer.layers]
    job = widget.run(latent=True, recon=True)
    qtbot.waitUntil(lambda: job.state.done >= 1, timeout=60_000)
    assert widget.cancel_button.enabled
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not job.state.running, timeout=60_000)
    qtbot.wait(300)
    assert job.state.message == "cancelled" and job.state.done < job.state.total
    assert [layer.name for layer in viewer.layers] == before
    assert widget.encode_button.enabled and not widget.cancel_button.enabled


def test_sync_mode_runs_in_the_calling_thread_and_reports_engine_errors(sync_jobs, errors):
    results = []

    def steps():
        yield Progress(1, 2, "encode")
        raise InputError("scan.nii: contains 3 NaN/Inf voxels")

    state = JobState()
    job = start_job(steps(), results.append, state, "Encode")
    assert job.worker_thread == [threading.get_ident()]
    assert results == [] and state.message == "failed" and not state.running
    assert errors == ["scan.nii: contains 3 NaN/Inf voxels"]
