"""Encode / Reconstruct: a current-slice preview, and the whole image in the background.

Results appear only when a job completes: a latent layer over the image (scale times f, shifted to
the block centres) and a reconstruction in the image's geometry and units. ``refine`` fits the
latent to the image through the decoder at encoding time (codec/refine.py), as ``--refine``;
unticking ``learned refiner`` leaves out a model's learned latent refiner, as ``--no-refiner``.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.utils.notifications import show_error

from medvae_engine.codec.pipeline import CodecOptions, decode_steps, encode_steps
from medvae_engine.errors import MedVAEError

from .._compare import encoding_suffix
from .._layers import (
    META_KEY,
    add_layers,
    latent_to_layer_data,
    layer_to_volume,
    provenance,
    slab,
    volume_to_layer_data,
)
from .._session import get_session
from .._threading import Job, JobState, start_job, then
from ._common import WIDGET_WIDTH, current_index, image_layers, medvae_panel, slicing_axis


def reconstruct_with_latent(volume, model, options):
    """Engine steps: encode then decode, returning both the Latent and the reconstruction."""
    latent = yield from encode_steps(volume, model, options)
    recon = yield from decode_steps(latent, model, options)
    return latent, recon


def with_model(session, work):
    """Steps that get the session's model (loading it here, in the worker) and run ``work(model)``."""
    model = yield from session.model_steps()
    return (yield from work(model))


class EncodeWidget(Container):
    """Docked encode/reconstruct panel for the chosen image layer."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        medvae_panel(self, napari_viewer)
        self.session = get_session(napari_viewer)
        self.job_state = JobState()
        self.job: Job | None = None
        self.layer = ComboBox(label="image", choices=lambda _: image_layers(self.viewer))
        self.refine = SpinBox(
            label="refine steps", value=0, min=0, max=500, step=10,
            tooltip="0: the encoder's latent in one pass. N: N gradient steps fit the latent to "
                    "the image through the decoder (closer to the image; each step costs about "
                    "three decoder passes)")
        self.refiner = CheckBox(
            text="learned refiner", value=True,
            tooltip="Run the model's learned latent refiner if it has one (the 3D starter: closer "
                    "to the image, about 7x the encoding time). Untick for the encoder's latent "
                    "alone; models without a refiner ignore this")
        self.preview_button = PushButton(text="Preview slice")
        self.encode_button = PushButton(text="Encode")
        self.reconstruct_button = PushButton(text="Reconstruct")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(label="", value="idle")
        self.extend([self.layer, self.refine, self.refiner, self.preview_button, self.encode_button,
                     self.reconstruct_button, self.cancel_button, self.status])
        self.preview_button.changed.connect(self.preview)
        self.encode_button.changed.connect(lambda: self.run(latent=True, recon=False))
        self.reconstruct_button.changed.connect(lambda: self.run(latent=True, recon=True))
        self.cancel_button.changed.connect(self.cancel)
        self.job_state.events.connect(self._show_state)
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def _show_state(self, _info=None) -> None:
        s = self.job_state
        self.cancel_button.enabled = s.running
        for button in (self.preview_button, self.encode_button, self.reconstruct_button):
            button.enabled = not s.running
        progress = f" {s.done}/{s.total}" if s.total else ""
        self.status.value = f"{s.label}: {s.message}{progress}" if s.label else "idle"

    def _inputs(self):
        """(layer, volume, options) or None after showing why not; the model loads in the job."""
        name = self.layer.value
        if name is None or name not in self.viewer.layers:
            show_error("choose an image layer to encode")
            return None
        layer = self.viewer.layers[name]
        try:
            volume = layer_to_volume(layer)
        except (MedVAEError, ValueError) as e:
            show_error(str(e))
            return None
        options = CodecOptions(axis=slicing_axis(self.viewer, layer),
                               precision=self.session.state.precision,
                               refine=int(self.refine.value), refiner=bool(self.refiner.value))
        return layer, volume, options

    def run(self, latent: bool = True, recon: bool = True) -> Job | None:
        """Encode (and decode) the whole image in the background."""
        inputs = self._inputs()
        if inputs is None:
            return None
        layer, volume, options = inputs
        name = layer.name
        source = {k: v for k, v in layer.metadata.get(META_KEY, {}).items() if k == "source_path"}

        refined = encoding_suffix(options.refine, options.refiner)

        def to_layers(result) -> list[tuple]:  # runs in the worker, off the GUI thread
            z, rec = result if recon else (result, None)
            layers = [latent_to_layer_data(z, f"{name} latent")]
            if rec is not None:
                title = f"{name} reconstruction ({z.model}, {options.precision}{refined})"
                layers.append(volume_to_layer_data(rec, title, "reconstruction", **provenance(z),
                                                   precision=options.precision,
                                                   refine=options.refine,
                                                   refiner=options.refiner, **source))
            return layers

        steps = with_model(self.session, lambda model: (
            reconstruct_with_latent(volume, model, options) if recon
            else encode_steps(volume, model, options)))
        label = "Reconstruct" if recon else "Encode"
        self.job = start_job(then(steps, to_layers), lambda layers: add_layers(self.viewer, layers),
                             self.job_state, f"{label} {name}")
        return self.job

    def preview(self) -> Job | None:
        """Reconstruct only the slice on screen (the whole image if it is 2D)."""
        inputs = self._inputs()
        if inputs is None:
            return None
        layer, volume, options = inputs
        if options.axis is not None:
            volume = slab(volume, options.axis, current_index(self.viewer, layer, options.axis))
        name = f"{layer.name} preview"

        def to_layer(result) -> tuple:
            z, rec = result
            return volume_to_layer_data(rec, name, "preview", **provenance(z),
                                        precision=options.precision, refine=options.refine,
                                        refiner=options.refiner)

        def add(data: tuple):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            return add_layers(self.viewer, [data])

        steps = then(with_model(self.session, lambda model: reconstruct_with_latent(
            volume, model, options)), to_layer)
        self.job = start_job(steps, add, self.job_state, f"Preview {layer.name}")
        return self.job

    def cancel(self) -> None:
        """Stop the running job; nothing is added."""
        if self.job is not None:
            self.job.cancel()
