"""Training data: sources -> normalised arrays -> deterministic random 2D crops or 3D patches.

A source is a file (NIfTI, DICOM, PNG/TIFF, MHA/NRRD), a folder (all images inside, recursively), a
CSV list (a ``path`` column, optional ``frame`` and ``modality`` columns, or one path per line) or a
``builtin:`` name for the real images bundled with pydicom, pydicom-data, nilearn, dipy and nibabel.
Every sample is a pure function of (seed, step, index in the global batch): the data order does not
depend on worker processes or on how the global batch is split across DDP ranks, and resuming at a
step needs no sampler state beyond the step itself.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..imaging.io import read_volume
from ..imaging.normalization import fit_normalization
from .config import AugmentSection, ConfigError, SourceSpec, TrainConfig, resolve_path

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".mha",
                  ".mhd", ".nrrd")
NIBABEL_FILES = {"example4d": "example4d.nii.gz", "anatomical": "anatomical.nii"}
MIN_CROP_STD = 0.02  # crops flatter than this (empty background) are redrawn
REDRAWS = 10
FLAT_REDRAWS = 50  # a crop wanted flat (data.flat_share) is looked for longer: flat areas are rare


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image to read: a file (or DICOM folder) plus how to read and slice it."""

    path: Path
    frame: int | None
    axes: tuple[int, ...]
    modality: str
    series_uid: str | None
    label: str
    region: tuple[tuple[float, float] | None, ...] | None = None  # fractions per array axis

    @property
    def key(self) -> tuple[str, int | None]:
        return (str(self.path.resolve()), self.frame)


def resolve_builtin(name: str) -> Path:
    """The file behind ``builtin:<package>/<name>``, found through the package's own API."""
    package, _, item = name.partition("/")
    path = None
    try:
        if package in ("pydicom", "pydicom-data"):
            from pydicom.data import get_testdata_file

            found = get_testdata_file(item)
            path = Path(found) if found else None
        elif package == "nilearn" and item == "mni152":
            from nilearn.datasets import MNI152_FILE_PATH

            path = Path(MNI152_FILE_PATH)
        elif package == "dipy" and item.startswith("S0_10"):
            from dipy.data import get_fnames

            path = Path(get_fnames(name="S0_10"))
        elif package == "nibabel":
            from nibabel.testing import data_path

            path = Path(data_path) / NIBABEL_FILES.get(item, item)
    except ImportError as e:
        raise ConfigError(f"builtin:{name}: needs the {e.name} package") from None
    if path is None or not path.exists():
        raise ConfigError(
            f"builtin:{name}: unknown or missing (known: pydicom/<test file>, nilearn/mni152, "
            f"dipy/S0_10slices, nibabel/example4d, nibabel/anatomical)"
        )
    return path


def expand_source(spec: SourceSpec, config: TrainConfig) -> list[ImageRef]:
    """The images one source stands for."""
    axes = tuple(spec.axes if spec.axes is not None else config.data.axes)
    if spec.path.startswith("builtin:"):
        paths = [resolve_builtin(spec.path.removeprefix("builtin:"))]
    else:
        root = resolve_path(config, spec.path)
        if root.is_dir():
            paths = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p))
            if not paths:
                known = ", ".join(IMAGE_SUFFIXES)
                raise ConfigError(f"{root}: data folder holds no images ({known})")
        elif root.suffix.lower() == ".csv":
            return [dataclasses.replace(r, axes=axes) for r in _csv_refs(root, spec, axes)]
        elif root.exists():
            paths = [root]
        else:
            raise ConfigError(f"{root}: data source not found")
    region = _region_tuple(spec.region)
    return [
        ImageRef(p, spec.frame, axes, spec.modality, spec.series_uid,
                 _region_label(spec.path if len(paths) == 1 else str(p), region), region)
        for p in paths
    ]


def _region_tuple(region: list | None) -> tuple | None:
    return None if region is None else tuple(None if b is None else tuple(b) for b in region)


def _region_label(label: str, region: tuple | None) -> str:
    if region is None:
        return label
    return label + "[" + ", ".join(":" if b is None else f"{b[0]:g}:{b[1]:g}" for b in region) + "]"


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _csv_refs(path: Path, spec: SourceSpec, axes: tuple[int, ...]) -> list[ImageRef]:
    rows = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines()) if r]
    if not rows:
        raise ConfigError(f"{path}: CSV list is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "path" in header:
        records = [dict(zip(header, (c.strip() for c in r), strict=False)) for r in rows[1:]]
    else:
        records = [{"path": r[0].strip()} for r in rows]
    refs = []
    for rec in records:
        p = Path(rec["path"]).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise ConfigError(f"{path}: listed image {p} not found")
        frame = int(rec["frame"]) if rec.get("frame") else spec.frame
        region = _region_tuple(spec.region)
        refs.append(ImageRef(p, frame, axes, rec.get("modality") or spec.modality,
                             spec.series_uid, _region_label(str(p), region), region))
    return refs


def load_image(ref: ImageRef) -> np.ndarray:
    """Read one image and map it to model space [-1, 1] with the engine's modality normalisation."""
    volume = read_volume(ref.path, frame=ref.frame, series_uid=ref.series_uid,
                         modality=ref.modality)
    norm = fit_normalization(volume.array, volume.modality)
    array = norm.forward(volume.array)
    if ref.region is not None:  # normalised on the whole image: a region's values match it
        array = array[region_slices(ref.region, array.shape, ref.path)]
    return np.ascontiguousarray(array, dtype=np.float32)


def region_slices(region: tuple, shape: tuple[int, ...], name: object) -> tuple[slice, ...]:
    """The pixel slices of a region (per axis None or (start, stop) fractions) in an image of
    this shape; ``name`` (the file) goes into the error."""
    if len(region) != len(shape):
        raise ConfigError(f"{name}: region lists {len(region)} axes, the image has "
                          f"{len(shape)} (shape {tuple(shape)})")
    out = []
    for b, n in zip(region, shape, strict=True):
        start, stop = (0, n) if b is None else (round(b[0] * n), round(b[1] * n))
        if stop <= start:
            raise ConfigError(f"{name}: region {list(b)} holds no pixel of an axis of length {n}")
        out.append(slice(start, stop))
    return tuple(out)


def regions_overlap(a: ImageRef, b: ImageRef) -> bool:
    """Whether two references to the same image can share a pixel (no region: the whole image)."""
    return a.key == b.key and not regions_disjoint(a.region, b.region)


def regions_disjoint(a: tuple | None, b: tuple | None) -> bool:
    """Whether two regions of one image share no pixel: their ranges part on some axis."""
    if a is None or b is None or len(a) != len(b):
        return False
    return any(x is not None and y is not None and (x[1] <= y[0] or y[1] <= x[0])
               for x, y in zip(a, b, strict=True))


@dataclasses.dataclass
class ImageSet:
    refs: list[ImageRef]
    arrays: list[np.ndarray]


def load_sources(config: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """Training and held-out validation images; a validation image can never be a training one."""
    train_refs = [r for s in config.data.train for r in expand_source(s, config)]
    val_refs = [r for s in config.data.val for r in expand_source(s, config)]
    for t in train_refs:
        for v in val_refs:
            if regions_overlap(t, v):
                path, frame = t.key
                raise ConfigError(
                    f"{path}: listed both for training and held-out validation (frame {frame}) "
                    "with overlapping regions; a held-out image (or region) must not be trained on"
                )
    train = ImageSet(train_refs, [load_image(r) for r in train_refs])
    val = ImageSet(val_refs, [load_image(r) for r in val_refs])
    if config.stage == "stage2_3d":
        flat = [r.label for r, a in zip(train.refs, train.arrays, strict=True) if a.ndim != 3]
        if flat:
            raise ConfigError(f"{flat[0]}: stage2_3d trains on volumes, this image is 2D")
    return train, val


def _pad_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    pads = [(max(0, s - n) // 2, max(0, s - n) - max(0, s - n) // 2) for n, s in zip(a.shape, shape,
                                                                                    strict=True)]
    return np.pad(a, pads, mode="reflect") if any(sum(p) for p in pads) else a


class PatchDataset(Dataset):
    """Item ``step * global_batch + i`` is crop i of that step: a (C, s, s) slice crop or a
    (C, p, p, p) patch, drawn from a generator seeded with (seed, step, i)."""

    def __init__(self, images: ImageSet, config: TrainConfig, factor: int, in_channels: int,
                 global_batch: int, spatial_dims: int, held_out: ImageSet | None = None):
        if held_out is not None:
            assert not any(regions_overlap(t, v) for t in images.refs for v in held_out.refs)
        self.arrays = images.arrays
        self.axes = [r.axes for r in images.refs]
        self.seed = config.seed
        self.factor = factor
        self.channels = in_channels
        self.global_batch = global_batch
        self.spatial_dims = spatial_dims
        lo, hi = config.data.crop
        self.sides = list(range(_round_up(lo, factor), max(_round_up(lo, factor), hi) + 1, factor))
        self.patch = _round_up(config.data.patch, factor)
        self.augment = config.data.augment
        self.flat_share = getattr(config.data, "flat_share", 0.0)
        self.large_share = getattr(config.data, "large_share", 0.0)
        if self.large_share > 0:
            lo, hi = config.data.large_crop
            self.large_sides = list(range(_round_up(lo, factor),
                                          max(_round_up(lo, factor), hi) + 1, factor))

    def __len__(self) -> int:
        return 2**62

    def crop_side(self, step: int) -> int:
        """The 2D crop side shared by every crop of a step (a large side at ``large_share`` of the
        steps, drawn from its own stream so recipes without large crops keep their crops)."""
        side = int(np.random.default_rng([self.seed, step]).choice(self.sides))
        if self.large_share > 0:
            rng = np.random.default_rng([self.seed, step, 3])
            if rng.random() < self.large_share:
                side = int(rng.choice(self.large_sides))
        return side

    def __getitem__(self, index: int) -> torch.Tensor:
        step, i = divmod(index, self.global_batch)
        rng = np.random.default_rng([self.seed, step, i, 1])
        want_flat = self.flat_share > 0 and np.random.default_rng(
            [self.seed, step, i, 2]).random() < self.flat_share
        for _ in range(FLAT_REDRAWS if want_flat else REDRAWS):  # flat crops redrawn, or kept only
            crop = self._draw(rng, step)
            if (crop.std() <= MIN_CROP_STD) == want_flat:
                break
        crop = augment(crop, rng, self.augment)
        t = torch.from_numpy(np.ascontiguousarray(crop))[None]
        return t.expand(self.channels, *t.shape[1:]).clone()

    def _draw(self, rng: np.random.Generator, step: int) -> np.ndarray:
        k = int(rng.integers(len(self.arrays)))
        a = self.arrays[k]
        if self.spatial_dims == 3:
            shape = (self.patch,) * 3
        else:
            side = self.crop_side(step)
            shape = (side, side)
            if a.ndim == 3:
                axis = int(rng.choice(self.axes[k]))
                a = np.take(a, int(rng.integers(a.shape[axis])), axis=axis)
        a = _pad_to(a, shape)
        starts = [int(rng.integers(n - s + 1)) for n, s in zip(a.shape, shape, strict=True)]
        return a[tuple(slice(b, b + s) for b, s in zip(starts, shape, strict=True))]


def augment(crop: np.ndarray, rng: np.random.Generator, aug: AugmentSection) -> np.ndarray:
    """Random flips and in-plane quarter turns, then (with probability ``aug.contrast``) a linear
    squeeze of [-1, 1] into a random sub-range: real images often fill only part of the model range
    (an MRI scaled by a few bright outliers, soft tissue inside the wide CT window)."""
    if aug.flips:
        for axis in range(crop.ndim):
            if rng.random() < 0.5:
                crop = np.flip(crop, axis)
        crop = np.rot90(crop, int(rng.integers(4)), axes=(crop.ndim - 2, crop.ndim - 1))
    if aug.contrast > 0 and rng.random() < aug.contrast:
        width = 2.0 * rng.uniform(aug.min_range, 1.0)
        lo = rng.uniform(-1.0, 1.0 - width)
        crop = lo + (crop + 1.0) * (width / 2.0)
    return np.ascontiguousarray(crop, dtype=np.float32)


class StepBatches(torch.utils.data.Sampler):
    """Index lists of this rank's micro-batches, step by step from ``start_step``."""

    def __init__(self, start_step: int, steps: int, batch: int, accumulation: int, rank: int,
                 world: int):
        self.start, self.steps = start_step, steps
        self.batch, self.accumulation, self.rank, self.world = batch, accumulation, rank, world

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accumulation

    def __iter__(self):
        g = self.batch * self.accumulation * self.world
        for step in range(self.start, self.steps):
            for m in range(self.accumulation):
                first = step * g + (m * self.world + self.rank) * self.batch
                yield list(range(first, first + self.batch))


def train_loader(dataset: PatchDataset, sampler: StepBatches, workers: int) -> DataLoader:
    """A DataLoader over the step batches (worker processes optional; order is unaffected)."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      persistent_workers=False)


def validation_crops(images: ImageSet, spatial_dims: int, side: int, factor: int,
                     in_channels: int) -> list[tuple[str, torch.Tensor]]:
    """Fixed held-out inputs: the centred crop of each 2D image or middle slice per axis (2D
    models), or the centred cube of each volume (3D models), sides a multiple of the factor."""
    side = max(factor, side // factor * factor)
    out = []
    for ref, a in zip(images.refs, images.arrays, strict=True):
        if spatial_dims == 3:
            pieces = [(ref.label, a)] if a.ndim == 3 else []
        elif a.ndim == 2:
            pieces = [(ref.label, a)]
        else:
            pieces = [(f"{ref.label}[axis {ax}]", np.take(a, a.shape[ax] // 2, axis=ax))
                      for ax in ref.axes]
        for label, p in pieces:
            target = tuple(min(side, _round_up(n, factor)) for n in p.shape)
            p = _pad_to(p, target)
            starts = [(n - s) // 2 for n, s in zip(p.shape, target, strict=True)]
            p = p[tuple(slice(b, b + s) for b, s in zip(starts, target, strict=True))]
            t = torch.from_numpy(np.ascontiguousarray(p))[None]
            out.append((label, t.expand(in_channels, *t.shape[1:]).clone()))
    return out


def _round_up(n: int, f: int) -> int:
    return -(-n // f) * f
