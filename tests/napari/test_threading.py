"""Whole-volume work runs in a thread worker: the GUI keeps ticking, Cancel leaves no layers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
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


def test_gui_steps_leave_the_event_loop_a_turn_between_layers(viewer, async_jobs, qtbot):
    """Adding result layers one per step: queued timers (the heartbeat here, input and repaints
    for a user) run between the steps, so a stall is one layer's insertion, not all of them."""
    events: list[tuple[str, float]] = []

    def busy_step(name):
        events.append((f"{name} start", time.perf_counter()))
        time.sleep(0.05)  # as long as napari takes to create one layer's visual and controls
        events.append((f"{name} end", time.perf_counter()))
        return name

    def gui_steps(_result):
        busy_step("create")  # on_done itself: the layers are created here
        return (busy_step(f"add {i}") for i in range(3))

    def steps():
        yield Progress(1, 1, "encode")
        return "result"

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    job = start_job(steps(), gui_steps, JobState(), "Encode")
    qtbot.waitUntil(lambda: not job.state.running, timeout=30_000)
    timer.stop()
    assert job.state.message == "done" and len(events) == 8
    ends = [t for name, t in events if name.endswith("end")]
    starts = [t for name, t in events if name.endswith("start")]
    for end, start in zip(ends[:-1], starts[1:]):
        assert any(end < tick < start for tick in ticks)


def test_cancel_inside_one_long_torch_computation_in_a_worker(viewer, async_jobs, qtbot):
    """One step that is a long run of torch operations (one model call, a chunked attention):
    Cancel from the GUI stops it inside, and nothing is handed to on_done."""
    x = torch.randn(256, 256)
    done_blocks: list[int] = []
    results: list[object] = []

    def steps():
        yield Progress(0, 1, "attention")
        for i in range(5000):  # about 1 ms each: seconds in all
            torch.softmax(x @ x.T, dim=-1)
            done_blocks.append(i)
        yield Progress(1, 1, "attention")
        return "complete"

    job = start_job(steps(), results.append, JobState(), "Encode")
    qtbot.waitUntil(lambda: len(done_blocks) >= 10, timeout=60_000)
    job.cancel()
    qtbot.waitUntil(lambda: not job.state.running, timeout=60_000)
    assert job.state.message == "cancelled" and results == []
    assert len(done_blocks) < 5000
