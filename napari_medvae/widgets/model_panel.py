"""Model panel: choose a starter, official or custom model, device and precision; shows its summary
and whether a zoo model's weights are on this machine, downloads official weights from the hub and
registers a local weights file."""

from __future__ import annotations

from pathlib import Path

import torch
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from medvae_engine.models import MODELS
from medvae_engine.models.loading import download_steps, register_weights_steps
from medvae_engine.runtime.precision import PRECISIONS
from medvae_engine.runtime.progress import Progress

from .._layers import layer_kind
from .._session import (
    build_model_steps,
    get_session,
    is_baseline,
    model_choices,
    summarize,
    weights_status,
)
from .._threading import Job, JobState, start_job
from ._common import WIDGET_WIDTH, medvae_panel, slicing_axis, wrapped

MIB = 1 << 20
WEIGHTS_FILTER = "Checkpoints (*.ckpt *.pt *.pth *.safetensors)"


def devices() -> list[str]:
    """cpu plus whatever accelerator torch sees."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


class ModelWidget(Container):
    """Docked model chooser; the choice lives in the viewer's `ModelState`."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        medvae_panel(self, napari_viewer)
        self.session = get_session(napari_viewer)
        self.job_state = JobState()
        state = self.session.state
        self.model_choice = ComboBox(label="model", choices=lambda _: model_choices(),
                                     value=state.choice)  # relabelled when weights arrive
        self.checkpoint = FileEdit(label="weights / checkpoint", mode="r",
                                   filter="*.safetensors *.ckpt *.pt *.pth")
        self.device = ComboBox(label="device", choices=devices(), value=state.device)
        self.precision = ComboBox(label="precision", choices=list(PRECISIONS), value=state.precision)
        self.weights = Label(label="", value="")
        wrapped(self.weights)
        self.download_button = PushButton(text="Download")
        self.open_weights_button = PushButton(text="Open weights file...")
        self.load_button = PushButton(text="Load model")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(label="", value="idle")
        self.summary = Label(label="", value=state.summary or "no model loaded")
        self.job: Job | None = None
        self.extend([self.model_choice, self.weights, self.download_button,
                     self.open_weights_button, self.checkpoint, self.device, self.precision,
                     self.load_button, self.cancel_button, self.status, self.summary])
        self.checkpoint.visible = not is_baseline(state.choice)
        self.model_choice.changed.connect(self._on_choice)
        self.checkpoint.changed.connect(
            lambda v: setattr(state, "checkpoint", "" if str(v) in ("", ".") else str(v)))
        self.device.changed.connect(lambda v: setattr(state, "device", v))
        self.precision.changed.connect(lambda v: setattr(state, "precision", v))
        self.load_button.changed.connect(self.load)
        self.download_button.changed.connect(self.download)
        self.open_weights_button.changed.connect(lambda: self.open_weights())
        self.cancel_button.changed.connect(lambda: self.job and self.job.cancel())
        self.job_state.events.connect(self._show_state)
        state.events.summary.connect(lambda text: setattr(self.summary, "value", text))
        self._show_weights()

    def _on_choice(self, value: str) -> None:
        self.session.state.choice = value
        self.checkpoint.visible = not is_baseline(value)
        self._show_weights()

    def _show_weights(self) -> None:
        """The weights line and the Download / Open buttons for the chosen model."""
        choice = self.session.state.choice
        spec = MODELS.get(choice)
        official = spec is not None and spec.source == "official"
        self.weights.value = weights_status(choice)
        self.weights.visible = spec is not None
        self.download_button.visible = self.open_weights_button.visible = official
        self.download_button.enabled = official and not spec.available and not self.job_state.running

    def _show_state(self, _info=None) -> None:
        s = self.job_state
        self.cancel_button.enabled = s.running
        for button in (self.load_button, self.open_weights_button):
            button.enabled = not s.running
        self._show_weights()
        progress = f" {s.done}/{s.total}" if s.total else ""
        self.status.value = f"{s.label}: {s.message}{progress}" if s.label else "idle"

    def _refresh_choices(self) -> None:
        """Relabel the zoo models (their weights may have arrived) and the weights line."""
        value = self.model_choice.value
        with self.model_choice.changed.blocked():  # relabelling is not a new choice
            self.model_choice.reset_choices()
            self.model_choice.value = value
        self._show_weights()

    def download(self) -> Job | None:
        """Fetch the chosen official model's weights from the hub with a progress bar (in MiB)."""
        spec = MODELS.get(self.session.state.choice)
        if spec is None or spec.source != "official":
            show_error("choose an official model to download its weights")
            return None

        def arrived(path: Path) -> None:
            self._refresh_choices()
            show_info(f"{spec.name}: weights saved to {path}")

        self.job = start_job(_mebibytes(download_steps(spec)), arrived, self.job_state,
                             f"Download {spec.filename}")
        return self.job

    def open_weights(self, path: str | Path | None = None) -> Job | None:
        """Register a local weights file for the chosen official model (checked by loading it)."""
        spec = MODELS.get(self.session.state.choice)
        if spec is None or spec.source != "official":
            show_error("choose an official model to register its weights file")
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self.native, f"Weights file for {spec.name} ({spec.filename})", str(Path.home()),
                WEIGHTS_FILTER)
            if not path:
                return None

        def registered(model) -> None:
            self._refresh_choices()
            state = self.session.state
            if state.choice == spec.name and not state.checkpoint and state.device == "cpu":
                self._loaded(model)  # checked by loading it: use it without a second load
            show_info(f"{spec.name}: {path} registered as {model.weights_path}")

        self.job = start_job(register_weights_steps(spec, path), registered, self.job_state,
                             f"Register {Path(path).name}")
        return self.job

    def load(self) -> None:
        """Load the chosen model in the background and show its summary for the selected image."""
        state = self.session.state

        def steps():
            yield Progress(0, 1, "load")
            model = yield from build_model_steps(state)
            yield Progress(1, 1, "load")
            return model

        self.job = start_job(steps(), self._loaded, self.job_state, "Load model")
        return self.job

    def _loaded(self, model) -> None:
        self.session.adopt(model)
        self.session.state.loaded = getattr(model, "name", self.session.state.choice)
        layer = self.viewer.layers.selection.active
        if layer is None or layer_kind(layer) == "latent" or layer.ndim not in (2, 3):
            self.session.state.summary = summarize(model, None)
            return
        axis = slicing_axis(self.viewer, layer)
        self.session.state.summary = summarize(model, tuple(layer.data.shape), axis,
                                               self.session.state.precision)


def _mebibytes(steps):
    """Re-yield byte counts as MiB, the unit the progress bar shows; closing it closes ``steps``."""
    try:
        while True:
            p = next(steps)
            yield Progress(-(-p.done // MIB), -(-p.total // MIB), p.stage)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()
