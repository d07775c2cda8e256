"""CAD inputs: labelled images from a CSV, and the representation a classifier sees.

An input is named by a codec spec (medvae_engine.codec.spec): ``pixels`` (the original pixels),
``<baseline>@<f>`` (an interpolation baseline such as ``bicubic@4``: the image downsampled to the
latent size, same storage as a C=1 latent) or an autoencoder (its stage-2 projected latent).
Representations are cached as .npy files keyed by the input's identity and the exact pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import torch

from ..codec.pipeline import pad_to_multiple
from ..codec.spec import load_codec, parse_codec
from ..data.sources import ImageRef, load_image
from ..errors import InputError, ModelError
from ..imaging.atomic import atomic_write_bytes
from ..models import weights_sha256


@dataclasses.dataclass
class LabelledImages:
    """Images in model space [-1, 1] (N, *spatial), integer labels, class names and optional split."""

    arrays: np.ndarray
    labels: np.ndarray
    classes: list[str]
    split: list[str] | None = None


@dataclasses.dataclass
class InputKind:
    """One representation: its spec, factor per side, the codec (None for images) and a cache id."""

    spec: str
    factor: int
    codec: torch.nn.Module | None
    identity: str

    @property
    def channels(self) -> int:
        return 1 if self.codec is None else int(self.codec.latent_channels)


def load_input(spec: str, spatial_dims: int = 2, device: str = "cpu") -> InputKind:
    """Resolve an input's codec spec (``pixels``, ``bicubic@4``, a model name or checkpoint path)."""
    parsed = parse_codec(spec)
    if parsed.kind == "pixels":
        return InputKind(spec, 1, None, "image")
    if parsed.kind == "baseline":
        codec = load_codec(parsed, spatial_dims=spatial_dims)
        return InputKind(spec, parsed.factor, codec, str(parsed))
    model = load_codec(parsed, device=device)
    if model.spatial_dims != spatial_dims:
        raise ModelError(f"{spec}: a {model.spatial_dims}D model cannot encode {spatial_dims}D images")
    identity = f"{spec}:{weights_sha256(model) or 'no-weights-file'}"
    return InputKind(spec, int(model.factor), model, identity)


def represent(arrays: np.ndarray, kind: InputKind, batch_size: int = 16) -> np.ndarray:
    """(N, *spatial) model-space images -> (N, C, *spatial/f) classifier inputs (float32)."""
    if kind.codec is None:
        return np.ascontiguousarray(arrays[:, None], dtype=np.float32)
    codec, f = kind.codec, kind.factor
    spatial = tuple(range(1, arrays.ndim))
    padded = pad_to_multiple(np.asarray(arrays, np.float32), f, axes=spatial)
    device = next(codec.parameters(), torch.zeros(0)).device
    out = []
    with torch.no_grad():
        for start in range(0, len(padded), batch_size):
            x = torch.from_numpy(padded[start:start + batch_size])[:, None].to(device)
            x = x.repeat_interleave(codec.in_channels, dim=1) if codec.in_channels > 1 else x
            out.append(codec.project(codec.encode(x)).float().cpu().numpy())
    return np.concatenate(out)


def cached_represent(
    arrays: np.ndarray, kind: InputKind, cache_dir: str | Path | None, batch_size: int = 16
) -> np.ndarray:
    """``represent`` through a cache: the same input identity on the same pixels is encoded once."""
    if cache_dir is None or kind.codec is None:
        return represent(arrays, kind, batch_size)
    digest = hashlib.sha256(kind.identity.encode())
    digest.update(str(arrays.shape).encode())
    digest.update(np.ascontiguousarray(arrays, np.float32).tobytes())
    stem = re.sub(r"[^A-Za-z0-9_.@-]", "_", kind.spec)[-40:]
    path = Path(cache_dir) / f"{stem}-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path)
    out = represent(arrays, kind, batch_size)
    buffer = io.BytesIO()
    np.save(buffer, out)
    atomic_write_bytes(path, buffer.getvalue())
    return out


def read_labelled_csv(path: str | Path, size: tuple[int, ...] | None = None) -> LabelledImages:
    """A CSV with ``path`` and ``label`` columns (optional ``split`` train/test, ``frame``, ``modality``).

    Relative paths are relative to the CSV. Images are normalised like every model input; with
    ``size`` each is centre-cropped or edge-padded to it, otherwise all must share one shape.
    """
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    except OSError as e:
        raise InputError(f"{path}: cannot read the CSV ({e.strerror})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise InputError(f"{path}: CSV needs a header with 'path' and 'label' columns and rows")
    arrays = []
    for row in rows:
        p = Path(row["path"]).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise InputError(f"{path}: listed image {p} not found")
        frame = int(row["frame"]) if row.get("frame") else None
        image = load_image(ImageRef(p, frame, (), row.get("modality") or "auto", None, str(p)))
        arrays.append(image if size is None else fit_shape(image, size))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"{path}: images have different shapes {sorted(shapes)}; pass --size")
    names = [r["label"].strip() for r in rows]
    numeric = all(n.lstrip("-").isdigit() for n in names)
    classes = sorted(set(names), key=int) if numeric else sorted(set(names))
    if len(classes) < 2:
        raise InputError(f"{path}: labels need at least two classes, found {classes}")
    split = [r.get("split", "").strip().lower() for r in rows] if "split" in rows[0] else None
    if split is not None and not set(split) <= {"train", "test"}:
        raise InputError(f"{path}: the split column may hold only 'train' and 'test'")
    labels = np.array([classes.index(n) for n in names])
    return LabelledImages(np.stack(arrays), labels, classes, split)


def fit_shape(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Centre crop or edge pad every axis to ``size`` (same number of axes)."""
    if len(size) != array.ndim:
        raise InputError(f"size {tuple(size)} has {len(size)} axes, the image has {array.ndim}")
    out = array
    for axis, (n, s) in enumerate(zip(array.shape, size)):
        if n > s:
            start = (n - s) // 2
            out = np.take(out, range(start, start + s), axis=axis)
        elif n < s:
            pad = [(0, 0)] * array.ndim
            pad[axis] = ((s - n) // 2, s - n - (s - n) // 2)
            out = np.pad(out, pad, mode="edge")
    return np.ascontiguousarray(out, dtype=np.float32)


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices: each class contributes ``test_fraction`` of its samples."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_test = max(1, round(test_fraction * idx.size)) if idx.size > 1 else 0
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train, int)), np.sort(np.array(test, int))
