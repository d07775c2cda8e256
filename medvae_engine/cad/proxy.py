"""Offline lesion-detection proxy: how much fine detail survives in latents vs interpolation.

Backgrounds are real crops of the allowed training sources (the ``builtin:`` images of the training
package). Exactly half of them receive a small synthetic lesion: a cluster of bright
microcalcification-like Gaussian spots or a thin bright fracture-like line, at a controlled size and
contrast. Labels hold by construction. Contrast is the peak intensity added, as a fraction of the
normalised intensity range ([-1, 1] model space has range 2), clipped at the top of the range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import numpy as np

from ..data.sources import ImageRef, load_image, resolve_builtin
from ..errors import InputError
from ..runtime.progress import Progress, rebased
from ..training.data import MIN_CROP_STD
from .datasets import cached_represent, load_input
from .train import Split, TrainSettings, evaluate_inputs, training_epochs

ALLOWED_SOURCES = (
    "pydicom/CT_small.dcm",
    "pydicom/MR_small.dcm",
    "pydicom-data/RG1_UNCR.dcm",
    "pydicom-data/MR2_UNCR.dcm",
    "pydicom-data/693_UNCR.dcm",
    "pydicom-data/eCT_Supplemental.dcm",
    "pydicom-data/emri_small.dcm",
    "nilearn/mni152",
    "dipy/S0_10slices",
    "nibabel/example4d",
    "nibabel/anatomical",
)
FRAMES = {"nibabel/example4d": 0}  # 4D file: its first volume
FOREGROUND = -0.9  # model-space level above which a pixel counts as tissue
MIN_FOREGROUND = 0.5  # fraction of tissue a background crop needs
PROFILE_FLOOR = 1e-3  # lesion profile values below this are exactly zero (finite support)
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
LESION_KINDS = ("spots", "lines", "mixed")


@dataclasses.dataclass(frozen=True)
class LesionSpec:
    """Size and contrast of the synthetic lesions."""

    kind: str = "mixed"  # spots, lines or mixed (each lesion image gets one kind at random)
    contrast: float = 0.1  # peak added intensity as a fraction of the intensity range
    spot_fwhm: float = 2.0  # spot diameter at half maximum, pixels
    spots: int = 3  # spots per cluster
    cluster_radius: float = 6.0  # spot centres lie within this distance of the cluster centre
    line_width: float = 1.0  # line width at half maximum, pixels
    line_length: float = 0.35  # line length as a fraction of the crop side

    def __post_init__(self) -> None:
        if self.kind not in LESION_KINDS:
            raise ValueError(f"lesion kind must be one of {LESION_KINDS}, got {self.kind!r}")
        if not 0.0 < self.contrast <= 1.0:
            raise ValueError(f"contrast must be in (0, 1], got {self.contrast}")


@dataclasses.dataclass
class LesionSet:
    """Images with lesions in exactly the label-1 half, and each image's lesion profile (peak 1)."""

    images: np.ndarray
    labels: np.ndarray
    profiles: np.ndarray
    kinds: list[str]


def load_backgrounds(sources: tuple[str, ...] = ALLOWED_SOURCES) -> dict[str, np.ndarray]:
    """Each allowed source as a stack of 2D slices (S, H, W) in model space [-1, 1]."""
    stacks = {}
    for name in sources:
        array = load_image(ImageRef(resolve_builtin(name), FRAMES.get(name), (), "auto", None, name))
        if array.ndim == 3:  # slices along the coarsest axis
            array = np.moveaxis(array, int(np.argmin(array.shape)), 0)
        stacks[name] = array[None] if array.ndim == 2 else array
    return stacks


def background_crops(
    n: int, side: int, seed: int, stacks: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[str]]:
    """``n`` random tissue crops side x side (random source, slice, position, rotation, flip)."""
    usable = [k for k, s in stacks.items() if min(s.shape[1:]) >= side]
    if not usable:
        raise InputError(f"no background source is at least {side} pixels wide")
    rng = np.random.default_rng(seed)
    crops, origins = [], []
    for _ in range(200 * n):
        if len(crops) == n:
            break
        name = usable[rng.integers(len(usable))]
        stack = stacks[name]
        image = stack[rng.integers(stack.shape[0])]
        r = rng.integers(image.shape[0] - side + 1)
        c = rng.integers(image.shape[1] - side + 1)
        crop = np.rot90(image[r:r + side, c:c + side], k=int(rng.integers(4)))
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        if crop.std() >= MIN_CROP_STD and (crop > FOREGROUND).mean() >= MIN_FOREGROUND:
            crops.append(np.ascontiguousarray(crop, dtype=np.float32))
            origins.append(name)
    if len(crops) < n:
        raise InputError(f"found only {len(crops)} of {n} tissue crops of side {side}")
    return np.stack(crops), origins


def spot_cluster(side: int, spec: LesionSpec, rng: np.random.Generator) -> np.ndarray:
    """Gaussian spots of FWHM ``spot_fwhm`` centred on pixels near one cluster centre; peak 1."""
    margin = int(np.ceil(spec.cluster_radius + 2 * spec.spot_fwhm))
    centre = rng.integers(margin, side - margin, size=2)
    yy, xx = np.mgrid[:side, :side]
    sigma = spec.spot_fwhm * FWHM_TO_SIGMA
    profile = np.zeros((side, side))
    for _ in range(spec.spots):
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0, spec.cluster_radius)
        cy = int(round(centre[0] + radius * np.sin(angle)))
        cx = int(round(centre[1] + radius * np.cos(angle)))
        spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        profile = np.maximum(profile, spot)
    return _finite_support(profile)


def thin_line(side: int, spec: LesionSpec, rng: np.random.Generator) -> np.ndarray:
    """A straight segment of width ``line_width`` (FWHM) and ``line_length`` x side, random angle."""
    length = spec.line_length * side
    margin = length / 2 + 2 * spec.line_width + 1
    centre = rng.uniform(margin, side - margin, size=2)
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    a, b = centre - direction * length / 2, centre + direction * length / 2
    points = np.stack(np.mgrid[:side, :side], axis=-1).astype(np.float64)
    t = np.clip(((points - a) @ (b - a)) / ((b - a) @ (b - a)), 0.0, 1.0)
    distance = np.linalg.norm(points - (a + t[..., None] * (b - a)), axis=-1)
    sigma = spec.line_width * FWHM_TO_SIGMA
    return _finite_support(np.exp(-(distance**2) / (2 * sigma**2)))


def _finite_support(profile: np.ndarray) -> np.ndarray:
    profile = np.where(profile >= PROFILE_FLOOR, profile, 0.0)
    return (profile / profile.max()).astype(np.float32)


def insert_lesions(crops: np.ndarray, spec: LesionSpec, seed: int | list[int]) -> LesionSet:
    """Add one lesion to exactly half of the crops (chosen at random); labels by construction."""
    rng = np.random.default_rng(seed)
    n, side = len(crops), crops.shape[-1]
    labels = rng.permutation(np.arange(n) < n // 2).astype(np.int64)
    profiles = np.zeros_like(crops)
    kinds = ["none"] * n
    for i in np.flatnonzero(labels):
        kind = spec.kind if spec.kind != "mixed" else ("spots", "lines")[rng.integers(2)]
        profiles[i] = spot_cluster(side, spec, rng) if kind == "spots" else thin_line(side, spec, rng)
        kinds[i] = kind
    images = np.clip(crops + 2.0 * spec.contrast * profiles, -1.0, 1.0).astype(np.float32)
    return LesionSet(images, labels, profiles, kinds)


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """The proxy experiment: inputs compared, contrast sweep, crop size and sample counts."""

    inputs: tuple[str, ...] = ("pixels", "bicubic@4", "bicubic@8", "starter_4_1_2d")
    contrasts: tuple[float, ...] = (0.05, 0.1, 0.2)
    lesion: LesionSpec = LesionSpec()
    side: int = 64
    n_train: int = 200
    n_test: int = 200
    data_seed: int = 0
    cache_dir: str | None = None
    device: str = "cpu"


def run_proxy(settings: ProxySettings, train: TrainSettings) -> Generator[Progress, None, dict]:
    """Train classifiers on every input at every contrast; yields Progress (inputs encoded and
    epochs trained), returns the results."""
    stacks = load_backgrounds()
    bg_train, origins = background_crops(settings.n_train, settings.side, settings.data_seed, stacks)
    bg_test, _ = background_crops(settings.n_test, settings.side, settings.data_seed + 1, stacks)
    kinds = [load_input(spec, 2, settings.device) for spec in settings.inputs]
    rows = []
    per_contrast = len(kinds) + training_epochs(len(kinds), train)
    total = len(settings.contrasts) * per_contrast
    for n, contrast in enumerate(settings.contrasts):
        before = n * per_contrast
        lesion = dataclasses.replace(settings.lesion, contrast=contrast)
        tag = round(contrast * 1e6)
        tr = insert_lesions(bg_train, lesion, seed=[settings.data_seed, tag, 0])
        te = insert_lesions(bg_test, lesion, seed=[settings.data_seed, tag, 1])
        splits = {}
        for i, kind in enumerate(kinds):
            splits[kind.spec] = Split(
                cached_represent(tr.images, kind, settings.cache_dir), tr.labels,
                cached_represent(te.images, kind, settings.cache_dir), te.labels,
            )
            yield Progress(before + i + 1, total, "encode",
                           info={"contrast": contrast, "input": kind.spec})
        results = yield from rebased(evaluate_inputs(splits, 2, train), before + len(kinds), total,
                                     contrast=contrast)
        for kind in kinds:
            r = results[kind.spec]
            rows.append({"contrast": contrast, "input": kind.spec, "factor": kind.factor,
                         "channels": kind.channels, **r})
    return {
        "task": "lesion-detection proxy",
        "lesion": dataclasses.asdict(settings.lesion) | {"contrast": list(settings.contrasts)},
        "side": settings.side,
        "n_train": settings.n_train,
        "n_test": settings.n_test,
        "background_sources": sorted(set(origins)),
        "train": dataclasses.asdict(train),
        "rows": rows,
    }


def proxy_markdown(results: dict) -> str:
    """Table: one row per input (factor, channels), one column per contrast, AUROC mean ± SD."""
    contrasts = sorted({r["contrast"] for r in results["rows"]})
    inputs = list(dict.fromkeys(r["input"] for r in results["rows"]))
    cell = {(r["input"], r["contrast"]): r for r in results["rows"]}
    head = "| input | f | C | " + " | ".join(f"contrast {c:g}" for c in contrasts) + " |"
    lines = [head, "|" + "---|" * (3 + len(contrasts))]
    for name in inputs:
        first = cell[(name, contrasts[0])]
        values = [f"{cell[(name, c)]['mean']:.3f} ± {cell[(name, c)]['sd']:.3f}" for c in contrasts]
        lines.append(f"| {name} | {first['factor']} | {first['channels']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
