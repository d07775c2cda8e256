"""Model panel: choose a starter, official or custom model, device and precision; shows its summary."""

from __future__ import annotations

import torch
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from medvae_engine.codec import PRECISIONS, Progress

from .._layers import layer_kind
from .._session import BASELINE_PREFIX, build_model, get_session, model_choices, summarize
from .._threading import JobState, start_job
from ._common import WIDGET_WIDTH, medvae_panel, slicing_axis


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
        self.model_choice = ComboBox(label="model", choices=model_choices(), value=state.choice)
        self.checkpoint = FileEdit(label="weights / checkpoint", mode="r",
                                   filter="*.safetensors *.ckpt *.pt *.pth")
        self.device = ComboBox(label="device", choices=devices(), value=state.device)
        self.precision = ComboBox(label="precision", choices=list(PRECISIONS), value=state.precision)
        self.load_button = PushButton(text="Load model")
        self.summary = Label(label="", value=state.summary or "no model loaded")
        self.extend([self.model_choice, self.checkpoint, self.device, self.precision,
                     self.load_button, self.summary])
        self.checkpoint.visible = not state.choice.startswith(BASELINE_PREFIX)
        self.model_choice.changed.connect(self._on_choice)
        self.checkpoint.changed.connect(
            lambda v: setattr(state, "checkpoint", "" if str(v) in ("", ".") else str(v)))
        self.device.changed.connect(lambda v: setattr(state, "device", v))
        self.precision.changed.connect(lambda v: setattr(state, "precision", v))
        self.load_button.changed.connect(self.load)
        state.events.summary.connect(lambda text: setattr(self.summary, "value", text))

    def _on_choice(self, value: str) -> None:
        self.session.state.choice = value
        self.checkpoint.visible = not value.startswith(BASELINE_PREFIX)

    def load(self) -> None:
        """Load the chosen model in the background and show its summary for the selected image."""
        state = self.session.state

        def steps():
            yield Progress(0, 1, "load")
            model = build_model(state)
            yield Progress(1, 1, "load")
            return model

        start_job(steps(), self._loaded, self.job_state, "Load model")

    def _loaded(self, model) -> None:
        self.session.model = model
        self.session.state.loaded = getattr(model, "name", self.session.state.choice)
        layer = self.viewer.layers.selection.active
        if layer is None or layer_kind(layer) == "latent" or layer.ndim not in (2, 3):
            self.session.state.summary = summarize(model, None)
            return
        axis = slicing_axis(self.viewer, layer)
        self.session.state.summary = summarize(model, tuple(layer.data.shape), axis)
