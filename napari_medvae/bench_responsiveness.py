"""``python -m napari_medvae.bench_responsiveness [--out FILE.json]``: GUI stalls during long work.

Reconstructs the bundled brain MRI (whole volume, 2D model slice by slice) from the Encode widget
in a thread worker while a QTimer heartbeat ticks every 10 ms, and reports the longest gap between
heartbeats (target < 250 ms), split into the work itself and the final layer insertion; it also
times a current-slice preview on the 256^2 shoulder MR. Uses the starter model when its weights are
installed, else the same architecture with seeded random weights (speed does not depend on them).
Then the official-size 3D architecture (medvae_4_1_3d, 161M parameters, seeded random weights saved
to a temporary safetensors file): its load from the Model panel, a windowed 3D encode in a job
worker, and how long a Cancel pressed during a window takes to stop the job, in a small window
and in the one large window the plugin chooses for the whole brain volume.
Runs in Xvfb when there is no display.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from medvae_engine.codec.memory import choose_roi
from medvae_engine.codec.pipeline import CodecOptions, encode_steps
from medvae_engine.models import get_spec, load_model, save_model

from ._layers import layer_to_volume
from ._sample_data import mr_shoulder, mri_brain
from ._session import CUSTOM, get_session
from ._threading import JobState, start_job
from .demo import start_xvfb
from .widgets import EncodeWidget, ModelWidget

TARGET_MS = 250.0
HEARTBEAT_MS = 10
OFFICIAL_3D = "medvae_4_1_3d"
VOLUME_3D = 64  # a 64^3 crop of the brain MRI in 48^3 windows: 8 windows
ROI_3D = 48
CANCEL_AFTER_S = 3.0
LARGE_CANCEL_AFTER_S = 20.0  # into the single window of the whole brain (several minutes of work)


def bench_model():
    """The starter model, or its architecture with seeded random weights (same cost)."""


    spec = get_spec("starter_4_1_2d")
    if spec.available:
        return load_model(spec.name)
    torch.manual_seed(0)
    model = spec.build().eval()
    model.name, model.weights_path = "starter_4_1_2d architecture (random weights)", None
    return model


def run_job(app, widget, start, cancel_after: float | None = None
            ) -> tuple[float, float, list[float], float | None]:
    """Start a job with ``start()`` while a heartbeat timer ticks, pressing the job's Cancel
    ``cancel_after`` seconds in (if given); returns (start time, end time, heartbeat times, time
    Cancel was pressed or None)."""
    from qtpy.QtCore import QTimer  # Qt: imported when a viewer is used

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    began, pressed = time.perf_counter(), None
    start()
    while widget.job_state.running:
        if cancel_after is not None and pressed is None and time.perf_counter() - began >= cancel_after:
            pressed = time.perf_counter()
            widget.job.cancel()
        app.processEvents()
        time.sleep(0.002)
    ended = time.perf_counter()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    return began, ended, ticks, pressed


def stalls(ticks: list[float], ended: float) -> dict[str, float]:
    """Longest heartbeat gap during the work and around the job's end (layer insertion)."""
    gaps = np.diff(ticks)
    at_end = [(b - a) * 1000 for a, b in zip(ticks[:-1], ticks[1:]) if a <= ended <= b + 0.05]
    during = [(b - a) * 1000 for a, b in zip(ticks[:-1], ticks[1:]) if b < ended - 0.05]
    worst = int(np.argmax(gaps)) if gaps.size else 0
    return {
        "longest_stall_ms": float(gaps.max() * 1000) if gaps.size else float("nan"),
        "longest_stall_ends_s_before_job_end": float(ended - ticks[worst + 1]) if gaps.size else 0.0,
        "longest_stall_during_work_ms": max(during, default=0.0),
        "stall_at_layer_insertion_ms": max(at_end, default=0.0),
        "heartbeats": len(ticks),
    }


def measure() -> dict:
    """Run both measurements in a shown viewer; returns the JSON record."""
    import napari  # napari starts Qt: imported when a viewer is used
    from napari.qt import get_qapp


    os.environ.pop("NAPARI_MEDVAE_SYNC", None)
    app = get_qapp()
    viewer = napari.Viewer(show=True)
    model = bench_model()
    session = get_session(viewer)
    session.model = model
    widget = EncodeWidget(viewer)
    viewer.window.add_dock_widget(widget)
    data, attributes, _ = mri_brain()[0]
    brain = viewer.add_image(data, **attributes)
    widget.layer.value = brain.name
    began, ended, ticks, _ = run_job(app, widget, lambda: widget.run(latent=True, recon=True))
    record = {"volume_shape": list(brain.data.shape), "model": model.name,
              "precision": session.state.precision, "reconstruct_s": ended - began,
              **stalls(ticks, ended), "target_ms": TARGET_MS}
    data, attributes, _ = mr_shoulder()[0]
    shoulder = viewer.add_image(data, **attributes)
    widget.reset_choices()
    widget.layer.value = shoulder.name
    default = session.state.precision
    for precision in dict.fromkeys([default, "fp32"]):  # the default, then fp32
        session.state.precision = precision
        began, ended, _, _ = run_job(app, widget, widget.preview)
        record[f"preview_256_{precision}_s"] = ended - began
    session.state.precision = default  # the 3D cases run in the plugin's default precision
    record.update(measure_official_3d(app, viewer))
    viewer.close()
    return record


def measure_official_3d(app, viewer) -> dict:
    """Load the official-size 3D architecture from the Model panel, encode a volume in windows,
    and cancel a second encode during a window; stalls of the GUI thread throughout."""



    record: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        spec = get_spec(OFFICIAL_3D)
        model = spec.build()
        record["official_3d_parameters"] = sum(p.numel() for p in model.parameters())
        path = save_model(model, Path(tmp) / f"{OFFICIAL_3D}_random.safetensors")
        del model
        panel = ModelWidget(viewer)
        viewer.window.add_dock_widget(panel)
        panel.model_choice.value = CUSTOM
        panel.checkpoint.value = path
        began, ended, ticks, _ = run_job(app, panel, panel.load)
        session = get_session(viewer)
        record.update({"load_official_3d_s": ended - began,
                       **{f"load_{k}": v for k, v in stalls(ticks, ended).items()}})
    brain = next(layer for layer in viewer.layers if layer.ndim == 3)
    volume = layer_to_volume(brain)
    crop = volume.array[:VOLUME_3D, :VOLUME_3D, :VOLUME_3D]
    volume = type(volume)(crop.copy(), volume.affine, volume.modality, dict(volume.metadata))
    options = CodecOptions(roi=ROI_3D, precision=session.state.precision)
    holder = SimpleNamespace(job_state=JobState())

    def encode():
        holder.job = start_job(encode_steps(volume, session.model, options), lambda _: None,
                               holder.job_state, "Encode 3D")

    began, ended, ticks, _ = run_job(app, holder, encode)
    record.update({"encode_3d_volume": [VOLUME_3D] * 3, "encode_3d_roi": ROI_3D,
                   "encode_3d_precision": options.precision,
                   "encode_3d_windows": holder.job_state.total, "encode_3d_s": ended - began,
                   **{f"encode_3d_{k}": v for k, v in stalls(ticks, ended).items()}})
    # Cancel CANCEL_AFTER_S in: the worker is inside a window then (each takes longer)
    _, ended, _, pressed = run_job(app, holder, encode, cancel_after=CANCEL_AFTER_S)
    record.update({"cancel_latency_s": ended - pressed,
                   "cancelled_after_windows": holder.job_state.done,
                   "cancel_outcome": holder.job_state.message})
    record.update(cancel_in_one_large_window(app, layer_to_volume(brain), session))
    return record


def cancel_in_one_large_window(app, volume, session) -> dict:
    """Encode the whole brain volume with the window the plugin chooses (automatic ROI: it runs
    as one window) and press Cancel LARGE_CANCEL_AFTER_S into it; the GUI heartbeat runs
    throughout."""
    options = CodecOptions(precision=session.state.precision)  # no ROI: sized to the memory
    factor = int(session.model.factor)
    padded = tuple(-(-s // factor) * factor for s in volume.shape)
    roi = choose_roi(session.model, options, padded, "encode")
    holder = SimpleNamespace(job_state=JobState())

    def encode():
        holder.job = start_job(encode_steps(volume, session.model, options), lambda _: None,
                               holder.job_state, "Encode 3D, one window")

    began, ended, ticks, pressed = run_job(app, holder, encode, cancel_after=LARGE_CANCEL_AFTER_S)
    return {"large_window_volume": list(volume.shape), "large_window_roi": roi,
            "large_window_precision": options.precision,
            "large_window_runs_as_one_window": all(s <= roi for s in padded),
            "large_window_cancel_pressed_after_s": pressed - began,
            "large_window_cancel_latency_s": ended - pressed,
            "large_window_windows_done": holder.job_state.done,
            "large_window_cancel_outcome": holder.job_state.message,
            **{f"large_window_{k}": v for k, v in stalls(ticks, ended).items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_medvae.bench_responsiveness")
    parser.add_argument("--out", type=Path, help="write the JSON record here as well")
    args = parser.parse_args(argv)
    xvfb = None
    if not os.environ.get("DISPLAY"):
        xvfb = start_xvfb()
    try:
        record = measure()
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
