"""``python -m napari_medvae.bench_responsiveness [--out FILE.json]``: GUI stalls during long work.

Reconstructs the bundled brain MRI (whole volume, 2D model slice by slice) from the Encode widget
in a thread worker while a QTimer heartbeat ticks every 10 ms, and reports the longest gap between
heartbeats (target < 250 ms), split into the work itself and the final layer insertion; it also
times a current-slice preview on the 256^2 shoulder MR. Uses the starter model when its weights are
installed, else the same architecture with seeded random weights (speed does not depend on them).
Runs in Xvfb when there is no display.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

TARGET_MS = 250.0
HEARTBEAT_MS = 10


def bench_model():
    """The starter model, or its architecture with seeded random weights (same cost)."""
    import torch

    from medvae_engine.models import get_spec, load_model

    spec = get_spec("starter_4_1_2d")
    if spec.available:
        return load_model(spec.name)
    torch.manual_seed(0)
    model = spec.build().eval()
    model.name, model.weights_path = "starter_4_1_2d architecture (random weights)", None
    return model


def run_job(app, viewer, widget, start) -> tuple[float, float, list[float]]:
    """Start a job with ``start()``; returns (start time, end time, heartbeat times)."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    began = time.perf_counter()
    start()
    while widget.job_state.running:
        app.processEvents()
        time.sleep(0.002)
    ended = time.perf_counter()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    return began, ended, ticks


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
    import napari
    from napari.qt import get_qapp

    from ._sample_data import mr_shoulder, mri_brain
    from ._session import get_session
    from .widgets import EncodeWidget

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
    began, ended, ticks = run_job(app, viewer, widget, lambda: widget.run(latent=True, recon=True))
    record = {"volume_shape": list(brain.data.shape), "model": model.name,
              "precision": session.state.precision, "reconstruct_s": ended - began,
              **stalls(ticks, ended), "target_ms": TARGET_MS}
    data, attributes, _ = mr_shoulder()[0]
    shoulder = viewer.add_image(data, **attributes)
    widget.reset_choices()
    widget.layer.value = shoulder.name
    for precision in dict.fromkeys([session.state.precision, "fp32"]):  # the default, then fp32
        session.state.precision = precision
        began, ended, _ = run_job(app, viewer, widget, widget.preview)
        record[f"preview_256_{precision}_s"] = ended - began
    viewer.close()
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_medvae.bench_responsiveness")
    parser.add_argument("--out", type=Path, help="write the JSON record here as well")
    args = parser.parse_args(argv)
    xvfb = None
    if not os.environ.get("DISPLAY"):
        from .demo import start_xvfb

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
