"""Radiological display maths without napari or Qt: orientation of voxel axes, screen letters and
window/level presets.

Convention (what PACS viewers, 3D Slicer and OHIF show): patient right on screen left, anterior up in
axial and sagittal views is replaced by superior up in coronal and sagittal ones, anterior on the
left in sagittal views. In napari terms every displayed world axis increases rightwards and
downwards, so each voxel axis is flipped (display only) to increase towards patient Left, Posterior
or Inferior, and the viewer's axis order picks which voxel axes are rows and columns.
"""

from __future__ import annotations

import numpy as np

RAS_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))  # (towards +axis, towards -axis) of x, y, z
VIEWS = ("axial", "coronal", "sagittal")
# view -> RAS axis (0=x, 1=y, 2=z) sliced through, shown as rows, shown as columns
VIEW_AXES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}

# CT window presets as (width, level) in HU (standard reading windows)
CT_PRESETS = {
    "brain": (80.0, 40.0),
    "subdural": (200.0, 75.0),
    "abdomen": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (2000.0, 500.0),
}
PERCENTILE_WINDOW = (1.0, 99.5)  # MR, X-ray and other modalities without calibrated units
PERCENTILE_PRESET = "percentile 1-99.5%"
HEAD_WORDS = ("HEAD", "BRAIN", "SKULL", "CRAN", "NEURO")
UNITS = {"ct": "HU"}


def anatomical_axes(affine: np.ndarray, ndim: int) -> tuple[list[int], list[int]]:
    """(RAS axis each voxel axis runs along most, +1/-1 whether its index grows towards R/A/S).

    Voxel axes are matched greedily by their largest direction cosine, so two axes of an oblique
    image never claim the same patient axis.
    """
    columns = np.abs(np.asarray(affine, np.float64)[:3, :ndim])
    columns = columns / np.maximum(np.linalg.norm(columns, axis=0), 1e-12)
    axes = [-1] * ndim
    taken: set[int] = set()
    for flat in np.argsort(-columns, axis=None):
        ras, voxel = divmod(int(flat), ndim)
        if axes[voxel] < 0 and ras not in taken:
            axes[voxel] = ras
            taken.add(ras)
    signs = [1 if np.asarray(affine)[axes[k], k] >= 0 else -1 for k in range(ndim)]
    return axes, signs


def display_flips(signs: list[int]) -> list[float]:
    """Per voxel axis, the display factor that makes it grow towards patient L, P or I."""
    return [-float(s) for s in signs]


def display_affine(signs: list[int], lead: int = 0) -> list[list[float]]:
    """The napari layer ``affine`` (applied after scale and translate): axis flips only, so the
    layer's data keeps its voxel order and writers ignore it."""
    return np.diag([1.0] * lead + display_flips(signs) + [1.0]).tolist()


def plane_of(axes: list[int]) -> str | None:
    """The view a 2D image lies in (the RAS axis it does not cover), None for other dimensions."""
    if len(axes) != 2:
        return None
    missing = ({0, 1, 2} - set(axes)).pop()
    return next(view for view, spec in VIEW_AXES.items() if spec[0] == missing)


def view_order(axes: list[int], view: str, world_ndim: int) -> tuple[int, ...]:
    """The viewer's dims order showing ``view`` of a layer with voxel axes ``axes`` (its trailing
    world axes); a 2D image shows its own plane whatever ``view`` is asked."""
    offset = world_ndim - len(axes)
    if len(axes) == 2:
        _, rows, cols = VIEW_AXES[plane_of(axes)]
        wanted = [rows, cols]
    else:
        wanted = list(VIEW_AXES[view])
    return tuple(range(offset)) + tuple(offset + axes.index(a) for a in wanted)


def screen_letters(row_axis: int, col_axis: int) -> dict[str, str]:
    """Letters at the canvas edges when RAS axes ``row_axis`` and ``col_axis`` are shown with the
    flips of `display_flips` (rows grow downwards towards P or I, columns rightwards towards L or P)."""
    return {"top": RAS_LETTERS[row_axis][0], "bottom": RAS_LETTERS[row_axis][1],
            "left": RAS_LETTERS[col_axis][0], "right": RAS_LETTERS[col_axis][1]}


def window_limits(width: float, level: float) -> tuple[float, float]:
    """Contrast limits (low, high) of a window given as width and level (centre)."""
    return level - width / 2.0, level + width / 2.0


def percentile_limits(data: np.ndarray, low: float = PERCENTILE_WINDOW[0],
                      high: float = PERCENTILE_WINDOW[1]) -> tuple[float, float]:
    """Contrast limits at two percentiles of the data (robust to a few extreme voxels)."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(data, np.float32), [low, high]))
    if hi <= lo:
        lo, hi = float(np.min(data)), float(np.max(data))
    return lo, hi if hi > lo else lo + 1.0


def is_head(metadata: dict) -> bool:
    """Whether DICOM-style metadata says the image shows the head (body part or descriptions)."""
    keys = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")
    text = " ".join(str(metadata.get(k, "")) for k in keys).upper()
    return any(word in text for word in HEAD_WORDS)


def opening_preset(modality: str, metadata: dict) -> str:
    """The window an image opens in: CT brain 80/40 for the head, abdomen 400/40 (soft tissue)
    for any other CT, a 1-99.5 percentile window for every other modality."""
    if modality == "ct":
        return "brain" if is_head(metadata) else "abdomen"
    return PERCENTILE_PRESET


def preset_limits(preset: str, data: np.ndarray) -> tuple[float, float]:
    """Contrast limits of a preset (CT presets are in HU; the percentile one reads the data)."""
    if preset in CT_PRESETS:
        return window_limits(*CT_PRESETS[preset])
    return percentile_limits(data)


def units_of(modality: str) -> str:
    """The intensity unit shown for a modality ('' when uncalibrated)."""
    return UNITS.get(modality, "")


def map_units(map_kind: str, modality: str) -> str:
    """Units of a map's values: the image's (a.u. when uncalibrated) for differences and errors,
    dB for local PSNR, '' for unitless maps (SSIM, labels)."""
    if map_kind == "local_psnr":
        return "dB"
    if map_kind in ("difference", "abs_error") or map_kind.startswith("subband_"):
        return units_of(modality) or "a.u."
    return ""
