"""Maps: difference, absolute error, hallucination/lost labels and wavelet subband error maps
blended over the reference, one at a time (a selector), each with a colour bar and its units in its
name; and a metric readout for the slice, the volume and a drawn region."""

from __future__ import annotations

from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
)
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error

from medvae_engine.analysis import check_geometry, compute_maps
from medvae_engine.analysis.hallucination import HALLUCINATED, LABEL_NAMES, LOST
from medvae_engine.errors import MedVAEError
from medvae_engine.runtime.progress import Progress

from .._layers import META_KEY, add_layers, layer_to_volume, volume_to_layer_data
from .._radiology import map_units, units_of
from .._readout import MetricsState, boxes_from_shapes, format_readout, readout
from .._threading import Job, JobState, start_job
from ._common import (
    NONE,
    WIDGET_WIDTH,
    current_index,
    image_layers,
    layers_of,
    medvae_panel,
    slicing_axis,
    wrapped,
)

SUBBANDS = ["LL3", "LH3", "HL3", "HH3", "LH2", "HL2", "HH2", "LH1", "HL1", "HH1"]
LABEL_COLORS = {0: "transparent", HALLUCINATED: "red", LOST: "dodgerblue", None: "transparent"}
LEGEND = (f"labels: red = {LABEL_NAMES[HALLUCINATED]}, blue = {LABEL_NAMES[LOST]}\n"
          "(beyond the AE noise floor tau = mean + k std of |AE - reference|)")
MAP_KIND = "map"
ALL_MAPS = "(all maps)"


class MapsWidget(Container):
    """Docked maps and metrics panel."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        medvae_panel(self, napari_viewer)
        self.job_state = JobState()
        self.metrics = MetricsState()
        self.job: Job | None = None
        self.reference = ComboBox(label="reference", choices=lambda _: image_layers(self.viewer))
        self.test = ComboBox(label="test", choices=lambda _: image_layers(self.viewer))
        self.ae = ComboBox(label="AE (hallucination)",
                           choices=lambda _: [NONE, *image_layers(self.viewer)])
        self.region = ComboBox(label="region",
                               choices=lambda _: [NONE, *layers_of(self.viewer, Shapes, Labels)])
        self.subbands = Select(label="subbands", choices=SUBBANDS, value=["HH1"])
        self.k = FloatSpinBox(label="k (noise floor)", value=2.0, min=0.5, max=5.0, step=0.5)
        self.opacity = FloatSlider(label="opacity", value=0.6, min=0.0, max=1.0)
        self.maps_button = PushButton(text="Compute maps")
        self.metrics_button = PushButton(text="Metrics")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.show_map = ComboBox(label="show map", choices=self._map_choices)
        self.legend = wrapped(Label(label="", value=LEGEND))
        self.readout = wrapped(Label(label="", value=""))
        self._new_maps: list[str] = []
        self.extend([self.reference, self.test, self.ae, self.region, self.subbands, self.k,
                     self.opacity, self.maps_button, self.metrics_button, self.cancel_button,
                     self.show_map, self.legend, self.readout])
        self.show_map.changed.connect(self.show_only)
        self.maps_button.changed.connect(self.compute)
        self.metrics_button.changed.connect(self.measure)
        self.cancel_button.changed.connect(lambda: self.job and self.job.cancel())
        self.opacity.changed.connect(self._set_opacity)
        self.job_state.events.running.connect(self._running)
        self.metrics.events.text.connect(lambda text: setattr(self.readout, "value", text))
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def _running(self, running: bool) -> None:
        self.cancel_button.enabled = running
        self.maps_button.enabled = self.metrics_button.enabled = not running
        if not running and self._new_maps:
            first, self._new_maps = self._new_maps[0], []
            self.reset_choices()
            if first in self.viewer.layers:
                self.show_map.value = first
                self.show_only(first)

    def map_layers(self) -> list[str]:
        """Names of the map layers (images and labels) in the viewer."""
        return [layer.name for layer in self.viewer.layers
                if layer.metadata.get(META_KEY, {}).get("map")]

    def _map_choices(self, _widget=None) -> list[str]:
        return [*self.map_layers(), ALL_MAPS]

    def show_only(self, name: str | None) -> None:
        """Show one map (or all of them) over the reference; the others stay hidden."""
        for layer in self.viewer.layers:
            if layer.metadata.get(META_KEY, {}).get("map"):
                layer.visible = name == ALL_MAPS or layer.name == name

    def _volumes(self):
        """(reference layer, reference, test, ae) on one grid, or None after an error notification."""
        names = [self.reference.value, self.test.value]
        if any(n is None or n not in self.viewer.layers for n in names):
            show_error("choose a reference and a test image layer")
            return None
        ref_layer = self.viewer.layers[names[0]]
        try:
            ref = layer_to_volume(ref_layer)
            test = check_geometry(ref, layer_to_volume(self.viewer.layers[names[1]]), names[1])
            ae = None
            if self.ae.value not in (None, NONE):
                ae = check_geometry(ref, layer_to_volume(self.viewer.layers[self.ae.value]),
                                    self.ae.value)
        except MedVAEError as e:
            show_error(str(e))
            return None
        return ref_layer, ref, test, ae

    def compute(self) -> Job | None:
        """Compute the maps in the background and add the chosen ones over the reference."""
        inputs = self._volumes()
        if inputs is None:
            return None
        ref_layer, ref, test, ae = inputs
        axis = slicing_axis(self.viewer, ref_layer)
        k, chosen, opacity = float(self.k.value), list(self.subbands.value), float(self.opacity.value)

        base = f"{self.test.value} vs {self.reference.value}"
        made_by = {k: test.metadata[k] for k in ("model", "weights_sha256") if test.metadata.get(k)}
        modality = ref.modality

        def steps():  # the maps and their layer data are made in the worker
            yield Progress(0, 1, "maps")
            maps = compute_maps(ref, test, ae, k=k, axis=2 if axis is None else axis)
            wanted = ["difference", "abs_error", *[f"subband_{s}" for s in chosen]]
            data = [self._map_layer(maps[key], _map_name(key, modality, base), key, opacity)
                    for key in wanted if key in maps]
            if "hallucination" in maps:
                data.append(self._labels_layer(maps["hallucination"], f"hallucination ({base})",
                                               opacity))
            for _, attributes, _ in data:  # which model and weights made the compared result
                attributes["metadata"][META_KEY].update(made_by)
            yield Progress(1, 1, "maps")
            self._new_maps = [attributes["name"] for _, attributes, _ in data]
            return data

        self.job = start_job(steps(), lambda data: add_layers(self.viewer, data), self.job_state,
                             "Maps")
        return self.job

    @staticmethod
    def _map_layer(volume, name: str, key: str, opacity: float) -> tuple:
        kind = "difference" if key == "difference" or key.startswith("subband_") else key
        data, attributes, layer_type = volume_to_layer_data(volume, name, MAP_KIND, map=kind)
        attributes["opacity"] = opacity
        return data, attributes, layer_type

    @staticmethod
    def _labels_layer(volume, name: str, opacity: float) -> tuple:
        data, attributes, layer_type = volume_to_layer_data(volume, name, "labels", map="hallucination")
        attributes.update(opacity=opacity, blending="translucent")
        attributes["colormap"] = {key: color for key, color in LABEL_COLORS.items()}
        return data, attributes, layer_type

    def _set_opacity(self, value: float) -> None:
        for layer in self.viewer.layers:
            if layer.metadata.get("medvae", {}).get("map"):
                layer.opacity = float(value)

    def measure(self) -> Job | None:
        """Metrics for the current slice, the whole volume and the drawn region."""
        inputs = self._volumes()
        if inputs is None:
            return None
        ref_layer, ref, test, ae = inputs
        axis = slicing_axis(self.viewer, ref_layer)
        index = 0 if axis is None else current_index(self.viewer, ref_layer, axis)
        boxes, mask = self._region(ref_layer)

        def steps():
            yield Progress(0, 1, "metrics")
            result = readout(ref.array, test.array, None if ae is None else ae.array,
                             axis=axis, index=index, boxes=boxes, mask=mask)
            yield Progress(1, 1, "metrics")
            return result

        low, high = float(ref.array.min()), float(ref.array.max())
        units = units_of(ref.modality) or "a.u."
        note = (f"PSNR/SSIM with both images mapped to [0, 1] by the reference's range "
                f"{low:g}..{high:g} {units} (not the display window)")

        def show(result) -> None:
            rows, subbands = result
            self.metrics.rows, self.metrics.subbands = rows, subbands
            self.metrics.text = note + "\n" + format_readout(rows, subbands)

        self.job = start_job(steps(), show, self.job_state, "Metrics")
        return self.job

    def _region(self, ref_layer):
        name = self.region.value
        if name in (None, NONE) or name not in self.viewer.layers:
            return None, None
        layer = self.viewer.layers[name]
        if isinstance(layer, Shapes):
            return boxes_from_shapes(layer, ref_layer) or None, None
        return None, layer.data > 0


def _map_name(key: str, modality: str, base: str) -> str:
    """'difference [HU] (test vs reference)': the map, its units and what it compares."""
    units = map_units(key, modality)
    return f"{key} [{units}] ({base})" if units else f"{key} ({base})"
