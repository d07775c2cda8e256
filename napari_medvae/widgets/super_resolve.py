"""Super-resolve: latent-diffusion SR of an image layer, or of an HR layer degraded for evaluation.

The SR layer lands at the HR spacing over the same anatomy (every LR voxel centre is the mean of
the centres of the HR voxels it becomes). Evaluating on a degraded HR layer also adds the LR input
and, when asked, the autoencoder's reconstruction of the HR reference: the noise floor the Maps
widget needs for hallucination maps. Layers appear only when the whole job has finished.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_warning

from medvae_engine.codec.baselines import PIXELS, PixelCodec
from medvae_engine.codec.spec import load_codec_steps
from medvae_engine.data.degradation import DEGRADATIONS, degrade_volume, lr_scale
from medvae_engine.errors import MedVAEError, ModelError
from medvae_engine.models.zoo import DEFAULT_SR, SR_MODELS
from medvae_engine.sr.pipeline import SROptions
from medvae_engine.sr.samplers import DEFAULT_STEPS, SAMPLERS

from .._layers import META_KEY, add_layers, layer_kind, layer_to_volume, volume_to_layer_data
from .._session import get_session
from .._super_resolve import (
    NO_SR_MODEL,
    describe_sr_model,
    sr_header,
    sr_job_steps,
)
from .._threading import Job, JobState, start_job, then
from ._common import NONE, WIDGET_WIDTH, image_layers, medvae_panel, slicing_axis, wrapped

LR_INPUT = "low-resolution image"
DEGRADE_HR = "HR image, degraded here"
MODEL_PANEL = "Model panel's choice"
SR_OWN = "the SR model's own (else the Model panel's)"
AS_DISPLAYED = -1


class SuperResolveWidget(Container):
    """Docked super-resolution panel."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        medvae_panel(self, napari_viewer)
        self.session = get_session(napari_viewer)
        self.job_state = JobState()
        self.job: Job | None = None
        self.layer = ComboBox(label="image", choices=lambda _: image_layers(self.viewer))
        self.mode = ComboBox(label="input is", choices=[LR_INPUT, DEGRADE_HR], value=LR_INPUT)
        self.degradation = ComboBox(label="degradation", choices=list(DEGRADATIONS),
                                    value="bicubic")
        self.factor = SpinBox(label="factor s", value=4, min=2, max=16)
        self.reference = ComboBox(label="HR reference",
                                  choices=lambda _: [NONE, *image_layers(self.viewer)])
        self.autoencoder = ComboBox(label="autoencoder", choices=[SR_OWN, MODEL_PANEL, PIXELS],
                                    value=SR_OWN)
        self._own_autoencoder: tuple[str, object] | None = None  # (name, loaded model)
        starter = SR_MODELS[DEFAULT_SR].local_path()
        self.sr_model = FileEdit(label="SR model", mode="r", filter="*.safetensors *.ckpt",
                                 value=starter if starter.is_file() else None)
        self.model_info = Label(label="", value=NO_SR_MODEL)
        wrapped(self.model_info)  # the no-model hint is a sentence
        self.sampler = ComboBox(label="sampler", choices=list(SAMPLERS), value="ddim")
        self.steps = SpinBox(label="steps", value=DEFAULT_STEPS["ddim"], min=1, max=1000)
        self.eta = FloatSpinBox(label="eta (DDIM)", value=0.0, min=0.0, max=1.0, step=0.1)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.samples = SpinBox(label="samples", value=1, min=1, max=64,
                               tooltip="2 or more: the mean of that many seeds plus their "
                               "per-voxel SD as an uncertainty overlay")
        self.axis = ComboBox(label="slice axis",
                             choices=[("as displayed", AS_DISPLAYED), ("0", 0), ("1", 1), ("2", 2)],
                             value=AS_DISPLAYED)
        self.add_ae = CheckBox(label="AE reconstruction of the reference", value=True)
        self.run_button = PushButton(text="Super-resolve")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(label="", value="idle")
        self.extend([self.layer, self.mode, self.degradation, self.factor, self.reference,
                     self.autoencoder, self.sr_model, self.model_info, self.sampler, self.steps,
                     self.eta, self.seed, self.samples, self.axis, self.add_ae, self.run_button,
                     self.cancel_button, self.status])
        self._sr_model_changed()
        self.mode.changed.connect(self._show_mode)
        self.sampler.changed.connect(self._sampler_changed)
        self.sr_model.changed.connect(self._sr_model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.job_state.events.connect(self._show_state)
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self._show_mode()

    def _show_mode(self, _value=None) -> None:
        degrading = self.mode.value == DEGRADE_HR
        self.degradation.visible = self.factor.visible = degrading
        self.reference.visible = not degrading

    def _sampler_changed(self, sampler: str) -> None:
        self.steps.value = DEFAULT_STEPS[sampler]
        self.eta.enabled = sampler == "ddim"

    def _sr_model_changed(self, _value=None) -> None:
        """Describe the chosen SR model; pick a fitting sampler and its training degradation."""
        path = self._sr_path()
        self.model_info.value = describe_sr_model(path)
        header = sr_header(path)
        if header is None:
            return
        if (header["objective"] == "flow") != (self.sampler.value == "flow"):
            self.sampler.value = "flow" if header["objective"] == "flow" else "ddim"
        degradation = header["card"].get("degradation") or {}
        if degradation.get("kind") in DEGRADATIONS and int(degradation.get("scale", 0)) > 1:
            self.degradation.value = degradation["kind"]
            self.factor.value = int(degradation["scale"])

    def _show_state(self, _info=None) -> None:
        s = self.job_state
        self.cancel_button.enabled = s.running
        self.run_button.enabled = not s.running
        progress = f" {s.done}/{s.total}" if s.total else ""
        self.status.value = f"{s.label}: {s.message}{progress}" if s.label else "idle"

    def _sr_path(self) -> str | None:
        value = self.sr_model.value
        if value is None or str(value) in ("", ".") or Path(value).is_dir():
            return None  # nothing chosen (an emptied file field shows the working folder)
        return str(value)

    def _autoencoder_steps(self, choice: str, path: str):
        """Steps giving the autoencoder; weights load where they run (the job's worker thread)."""
        if choice == PIXELS:
            return PixelCodec()
        if choice == MODEL_PANEL:
            return (yield from self.session.model_steps())
        if not Path(path).is_file():
            raise ModelError(f"{path}: SR model file not found")
        name = (sr_header(path) or {}).get("card", {}).get("autoencoder")
        if not name:  # e.g. a published latent-sr checkpoint: the user picks it in the Model panel
            return (yield from self.session.model_steps())
        if self._own_autoencoder is None or self._own_autoencoder[0] != name:
            self._own_autoencoder = (name, (yield from load_codec_steps(name)))
        return self._own_autoencoder[1]

    def run(self) -> Job | None:
        """Super-resolve the chosen layer in the background; errors become notifications."""
        name = self.layer.value
        if name is None or name not in self.viewer.layers:
            show_error("choose an image layer to super-resolve")
            return None
        sr_path = self._sr_path()
        if sr_path is None:
            show_error(NO_SR_MODEL)
            return None
        layer = self.viewer.layers[name]
        try:
            volume = layer_to_volume(layer)
            axis = self._slice_axis(layer)
            options = SROptions(sampler=self.sampler.value, steps=int(self.steps.value),
                                eta=float(self.eta.value) if self.sampler.value == "ddim" else 0.0,
                                seed=int(self.seed.value), axis=axis,
                                precision=self.session.state.precision,
                                scale=(lr_scale(self.degradation.value, int(self.factor.value))
                                       if self.mode.value == DEGRADE_HR else None))
            lr, reference, made = self._inputs(volume, axis)
        except (MedVAEError, ValueError) as e:
            show_error(str(e))
            return None
        source = {k: v for k, v in layer.metadata.get(META_KEY, {}).items() if k == "source_path"}

        def to_layers(result: dict) -> tuple[list[tuple], str]:  # in the worker thread
            info = result["provenance"]
            tag = f"x{info['scale']} {info['sampler']} seed {info['seed']}"
            if info["samples"] > 1:
                last = info["seed"] + info["samples"] - 1
                tag = f"x{info['scale']} {info['sampler']} mean of seeds {info['seed']}-{last}"
            layers = []
            if made:
                layers.append(volume_to_layer_data(lr, f"{name} LR ({made})", "low-resolution"))
            if made and reference.shape != volume.shape:
                layers.append(volume_to_layer_data(reference, f"{name} reference (cropped)",
                                                   "reference", **source))
            layers.append(volume_to_layer_data(result["sr"], f"{name} SR ({tag})",
                                               "super-resolution", input_layer=name,
                                               degradation=made or None, **info, **source))
            if result["sd"] is not None:
                layers.append(uncertainty_layer_data(result["sd"], name, tag, info))
            if result["ae"] is not None:
                layers.append(volume_to_layer_data(
                    result["ae"], f"{name} reference AE ({info['model']})", "reconstruction",
                    model=info["model"], weights_sha256=info["weights_sha256"],
                    factor=info["factor"]))
            return layers, info["model"] if result["ae_mismatch"] else ""

        def add(built: tuple[list[tuple], str]):
            layers, mismatched = built
            if mismatched:
                show_warning(f"autoencoder {mismatched} is not the one {sr_path} was trained with")
            return with_colorbars(add_layers(self.viewer, layers))

        choice, reconstruct = self.autoencoder.value, bool(self.add_ae.value)
        samples = int(self.samples.value)

        def steps():
            autoencoder = yield from self._autoencoder_steps(choice, sr_path)
            return (yield from sr_job_steps(lr, autoencoder, sr_path, options, reference,
                                            reconstruct=reconstruct, samples=samples))

        self.job = start_job(then(steps(), to_layers), add, self.job_state, f"Super-resolve {name}")
        return self.job

    def _slice_axis(self, layer) -> int | None:
        """The chosen slice axis, or the one the viewer slices through (None for 2D layers)."""
        if layer.ndim < 3:
            return None
        chosen = self.axis.value
        return slicing_axis(self.viewer, layer) if chosen == AS_DISPLAYED else int(chosen)

    def _inputs(self, volume, axis):
        """(LR input, HR reference or None, degradation label or "")."""
        if self.mode.value == DEGRADE_HR:
            kind, s = self.degradation.value, int(self.factor.value)
            lr, reference = degrade_volume(volume, kind, s, axis)
            return lr, reference, f"{kind} /{s}"
        ref_name = self.reference.value
        if ref_name in (None, NONE) or ref_name not in self.viewer.layers:
            return volume, None, ""
        return volume, layer_to_volume(self.viewer.layers[ref_name]), ""

    def cancel(self) -> None:
        """Stop the running job; nothing is added."""
        if self.job is not None:
            self.job.cancel()


def uncertainty_layer_data(sd, name: str, tag: str, info: dict) -> tuple:
    """The per-voxel SD over the samples as an overlay (magma, additive, 0..p99.5), with its
    units in the name and metadata; ``with_colorbars`` shows its colour bar."""
    units = sd.metadata.get("units", "input intensity units")
    data, attributes, kind = volume_to_layer_data(
        sd, f"{name} SR uncertainty (SD over {info['samples']} samples, {sd_unit(sd)})",
        "uncertainty", units=units, **info)
    attributes.update(colormap="magma", blending="additive", opacity=0.7,
                      contrast_limits=[0.0, float(np.percentile(data, 99.5)) or 1.0])
    return data, attributes, kind


def sd_unit(sd) -> str:
    """Short units for the layer name: HU for CT, else the input's intensity units."""
    return "HU" if sd.modality == "ct" else "intensity units"


def with_colorbars(steps):
    """Re-yield added layers, switching the colour bar on for uncertainty overlays."""
    for layer in steps:
        if layer_kind(layer) == "uncertainty":
            layer.colorbar.visible = True
        yield layer
