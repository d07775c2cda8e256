"""Training data: sources -> normalised arrays -> deterministic random 2D crops or 3D patches.

A source is a file (NIfTI, DICOM, PNG/TIFF, MHA/NRRD), a folder (all images inside, recursively), a
CSV list (a ``path`` column, optional ``frame`` and ``modality`` columns, or one path per line) or a
``builtin:`` name for the real images bundled with pydicom, pydicom-data, nilearn, dipy and nibabel.
Every sample is a pure function of (seed, step, index in the global batch): the data order does not
depend on worker processes or on how the global batch is split across DDP ranks, and resuming at a
step needs no sampler state beyond the step itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.sources import ImageRef, expand_source, load_image, regions_overlap
from ..errors import ConfigError
from .config import AugmentSection, TrainConfig

MIN_CROP_STD = 0.02  # crops flatter than this (empty background) are redrawn
REDRAWS = 10
FLAT_REDRAWS = 50  # a crop wanted flat (data.flat_share) is looked for longer: flat areas are rare


@dataclasses.dataclass
class ImageSet:
    refs: list[ImageRef]
    arrays: list[np.ndarray]


def load_sources(config: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """Training and held-out validation images; a validation image can never be a training one."""
    train_refs = [r for s in config.data.train for r in expand_source(s, config.data.axes, config.base_dir)]
    val_refs = [r for s in config.data.val for r in expand_source(s, config.data.axes, config.base_dir)]
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
        coarse = self.coarse_factors(step, i)
        for _ in range(FLAT_REDRAWS if want_flat else REDRAWS):  # flat crops redrawn, or kept only
            crop = self._draw(rng, step, coarse)
            if (crop.std() <= MIN_CROP_STD) == want_flat:
                break
        crop = augment(crop, rng, self.augment)
        t = torch.from_numpy(np.ascontiguousarray(crop))[None]
        return t.expand(self.channels, *t.shape[1:]).clone()

    def coarse_factors(self, step: int, i: int) -> tuple[int, ...] | None:
        """Per-axis block sizes of a crop read at coarser voxels (``augment.coarsen``), from its
        own stream so that recipes without it keep their crops; None: native voxels."""
        aug = self.augment
        if aug.coarsen <= 0:
            return None
        rng = np.random.default_rng([self.seed, step, i, 4])
        if rng.random() >= aug.coarsen:
            return None
        return tuple(int(k) for k in rng.integers(1, aug.max_coarsen + 1, self.spatial_dims))

    def _draw(self, rng: np.random.Generator, step: int,
              coarse: tuple[int, ...] | None = None) -> np.ndarray:
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
        final = shape
        if coarse is not None:  # a larger region, block-averaged back to the crop's shape
            shape = tuple(s * k for s, k in zip(shape, coarse, strict=True))
        a = _pad_to(a, shape)
        starts = [int(rng.integers(n - s + 1)) for n, s in zip(a.shape, shape, strict=True)]
        crop = a[tuple(slice(b, b + s) for b, s in zip(starts, shape, strict=True))]
        if coarse is None:
            return crop
        split = [n for s, k in zip(final, coarse, strict=True) for n in (s, k)]
        return crop.reshape(split).mean(axis=tuple(range(1, 2 * len(final), 2)))


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
