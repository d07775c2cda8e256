"""Compare: chosen layers side by side in napari's grid (one camera, one slice), each panel captioned
on the canvas (and in exported screenshots) with PSNR, SSIM and MS-SSIM against the first panel,
windows linked by default (the viewer's `RadiologicalDisplay`), one-click 2/3/4 panel layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from medvae_engine.runtime.progress import Progress

from .._compare import (
    LAYOUTS,
    CompareState,
    format_metrics,
    panel_caption,
    panel_metrics,
    plan_grid,
    suggest_panels,
)
from .._layers import META_KEY
from .._threading import Job, JobState, start_job
from ._captions import set_caption
from ._common import (
    NONE,
    WIDGET_WIDTH,
    current_index,
    grid_of,
    layers_of,
    medvae_panel,
    slicing_axis,
    wrapped,
)

METRICS_NOTE = ("PSNR, SSIM, MS-SSIM against panel 1, both mapped to [0, 1] with panel 1's "
                "[min, max] in its units (the data range, not the display window)")

MAX_PANELS = 4


class CompareWidget(Container):
    """Docked compare panel; the layout lives in `CompareState`."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        self.display = medvae_panel(self, napari_viewer)
        self.state = CompareState()
        self.job_state = JobState()
        self.job: Job | None = None
        self._scored: tuple | None = None  # (panels, axis, index) the captions show
        self._volume_key: tuple | None = None
        self._volume_scores: dict[str, dict] = {}
        self.bases = [ComboBox(label=f"panel {i + 1}", choices=self._choices) for i in range(MAX_PANELS)]
        self.overlays = [ComboBox(label=f"  overlay {i + 1}", choices=self._choices)
                         for i in range(MAX_PANELS)]
        self.layout_buttons = {n: PushButton(text=f"{n} panels") for n in LAYOUTS}
        self.off_button = PushButton(text="Grid off")
        self.link = CheckBox(text="link windows (W/L)", value=self.display.state.link_window)
        self.metrics_button = PushButton(text="Update metrics")
        self.metrics = wrapped(Label(value=""))
        self.path = FileEdit(label="screenshot", mode="w", filter="*.png", value="compare.png")
        self.shot_button = PushButton(text="Save screenshot")
        for base, overlay in zip(self.bases, self.overlays, strict=True):
            self.extend([base, overlay])
        self.extend([*self.layout_buttons.values(), self.off_button, self.link,
                     self.metrics_button, self.metrics, self.path, self.shot_button])
        for n, button in self.layout_buttons.items():
            button.changed.connect(lambda _=None, n=n: self.apply(n))
        self.off_button.changed.connect(self.grid_off)
        self.link.changed.connect(
            lambda v: setattr(self.display.state, "link_window", bool(v)))
        self.display.state.events.link_window.connect(self._show_link)
        self.metrics_button.changed.connect(self.update_metrics)
        self.viewer.dims.events.current_step.connect(self.update_metrics)
        self.shot_button.changed.connect(lambda: self.screenshot(self.path.value))
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def _choices(self, _widget=None) -> list[str]:
        return [NONE, *layers_of(self.viewer)]

    def panels_from_widgets(self, n: int) -> list[tuple[str, str]]:
        """The first ``n`` chosen panels; suggestions fill the grid when nothing is chosen."""
        chosen = [(b.value, "" if o.value in (None, NONE) else o.value)
                  for b, o in zip(self.bases[:n], self.overlays[:n], strict=True)
                  if b.value not in (None, NONE)]
        return chosen or suggest_panels(self.viewer.layers, n)

    def apply(self, n: int, panels: list[tuple[str, str]] | None = None) -> None:
        """Show ``panels`` (default: the widget's choice) in an n-panel grid with one camera."""
        panels = panels if panels is not None else self.panels_from_widgets(n)
        if not panels:
            show_error("no layers to compare: open an image and reconstruct it first")
            return
        names = [layer.name for layer in self.viewer.layers]
        missing = [name for pair in panels for name in pair if name and name not in names]
        if missing:
            show_error(f"compare: no layer named {missing[0]!r}")
            return
        plan = plan_grid(panels, names)
        order = [name or self._spacer(i, panels[0][0]) for i, name in enumerate(plan.order)]
        for target, name in enumerate(order):
            self.viewer.layers.move(self.viewer.layers.index(name), target)
        for layer in self.viewer.layers:
            layer.visible = layer.name in plan.visible
        grid = grid_of(self.viewer)
        grid.stride, grid.shape, grid.enabled = plan.stride, LAYOUTS[n], True
        self.state.panels, self.state.enabled = list(panels), True
        self._show_panels(panels)
        self.viewer.reset_view()
        self._caption(panels, {})
        self._scored = self._volume_key = None
        self.update_metrics()

    def _show_link(self, value: bool) -> None:
        with self.link.changed.blocked():
            self.link.value = bool(value)

    def _caption(self, panels: list[tuple[str, str]], scores: dict[str, str]) -> None:
        """Each panel's caption on its base layer: what it shows, and its scores when known."""
        for base, overlay in panels:
            layer = self.viewer.layers[base]
            text = panel_caption(base, layer.metadata.get(META_KEY, {}), overlay)
            set_caption(layer, text + (f"\n{scores[base]}" if base in scores else ""))

    def update_metrics(self, _event=None) -> Job | None:
        """PSNR, SSIM and MS-SSIM of every image panel against panel 1: the slice on screen (again
        whenever the slice changes) and the volume (once per comparison)."""
        panels = list(self.state.panels)
        if len(panels) < 2 or not self.state.enabled or any(
                base not in self.viewer.layers for base, _ in panels):
            return None
        reference = self.viewer.layers[panels[0][0]]
        tests = [self.viewer.layers[base] for base, _ in panels[1:]
                 if isinstance(self.viewer.layers[base], Image)
                 and self.viewer.layers[base].data.shape == reference.data.shape
                 and self.viewer.layers[base].metadata.get(META_KEY, {}).get("kind") != "map"]
        if not tests:
            self.metrics.value = ""
            return None
        axis = slicing_axis(self.viewer, reference)
        index = 0 if axis is None else current_index(self.viewer, reference, axis)
        if (panels, axis, index) == self._scored:
            return None
        if self.job is not None and self.job_state.running:
            self.job.cancel()
        ref = np.asarray(reference.data, np.float32)
        pairs = [(layer.name, np.asarray(layer.data, np.float32)) for layer in tests]
        known = {name: self._volume_scores[name] for name, _ in pairs
                 if (panels, axis) == self._volume_key and name in self._volume_scores}

        def steps():
            yield Progress(0, len(pairs), "metrics")
            scores = {}
            for done, (name, data) in enumerate(pairs, 1):
                scores[name] = panel_metrics(ref, data, axis, index, volume=name not in known)
                scores[name].update({"volume": known[name]} if name in known else {})
                yield Progress(done, len(pairs), "metrics")
            return scores

        def show(scores: dict[str, dict]) -> None:
            if self.state.panels != panels:
                return
            self._scored = (panels, axis, index)
            self._volume_key = (panels, axis)
            self._volume_scores = {name: s["volume"] for name, s in scores.items() if "volume" in s}
            text = {name: format_metrics(s) for name, s in scores.items()}
            self._caption(panels, text)
            where = "" if axis is None else f" (slice {index} along voxel axis {axis})"
            self.metrics.value = "\n".join(
                [METRICS_NOTE + where + ":"] + [f"{name}\n{t}" for name, t in text.items()])

        self.job = start_job(steps(), show, self.job_state, "Compare metrics")
        return self.job

    def _show_panels(self, panels: list[tuple[str, str]]) -> None:
        """Reflect the applied panels in the combo boxes."""
        self.reset_choices()
        for i, (base, overlay) in enumerate(panels):
            self.bases[i].value, self.overlays[i].value = base, overlay or NONE
        for base, overlay in zip(self.bases[len(panels):], self.overlays[len(panels):], strict=True):
            base.value = overlay.value = NONE

    def _spacer(self, index: int, like: str) -> str:
        """A hidden one-voxel layer that keeps a panel without overlay at stride 2."""
        ref = self.viewer.layers[like]
        name = f"compare spacer {index}"
        if name not in self.viewer.layers:
            self.viewer.add_image(np.zeros((1,) * ref.ndim, np.float32), name=name, visible=False,
                                  scale=ref.scale, translate=ref.translate,
                                  affine=ref.affine.affine_matrix, units=ref.units,
                                  metadata={META_KEY: {"kind": "spacer"}})
        return name

    def grid_off(self) -> None:
        """Back to one canvas; every layer visible again."""
        grid_of(self.viewer).enabled = False
        self.state.enabled = False
        for layer in self.viewer.layers:
            layer.visible = layer.metadata.get(META_KEY, {}).get("kind") != "spacer"
            set_caption(layer, "")

    def screenshot(self, path) -> Path | None:
        """Save the canvas (the whole grid, captions and colour bars included) as PNG."""
        path = Path(path)
        try:
            self.viewer.screenshot(path=str(path), canvas_only=True)
        except (OSError, RuntimeError) as e:
            show_error(f"{path}: screenshot failed ({e})")
            return None
        show_info(f"screenshot saved to {path}")
        return path
