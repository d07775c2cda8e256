"""Dataset encoding: one latent per input under dataset folders and CSV lists, none lost.

Inputs. A dataset folder is walked recursively: each file whose suffix a reader knows is one input,
except DICOM files (``.dcm`` or the ``DICM`` preamble): a folder directly holding DICOM images is one
series input, read (and checksummed) with its subfolders as the series reader reads it; DICOM
objects without an image (DICOMDIR, reports) make no series. A CSV lists one image file or DICOM
series folder per row (first column; header optional). A file or series folder given directly is
one input.

Names. Each latent mirrors its input's path relative to the dataset root (the folder given, or the
CSV's folder; a CSV row outside it keeps its absolute path without the leading ``/``):
``a/image.nii.gz`` -> ``a/image.latent.nii.gz`` + ``a/image.latent.json``.

Resume. The sidecar records the input's `source_record`: its size and sha256 (for a DICOM series
the total size and a sha256 over each file's relative path, size and sha256). A latent is kept only
when that record, the model name, the weights sha256 and the ``projected`` flag all match this run.

Batches. A thread hashes and reads the next inputs while the model runs; consecutive 2D inputs of
one padded slice shape share the 2D model's batches of ``batch_size`` slices (see `Encoder`).

Failures. An input that cannot be read or encoded is recorded (path, one-line error) and the rest go
on; the caller writes them with `write_failures`. Under torchrun each rank encodes
``inputs[rank::world]`` and `gather` brings every rank's counts and failures to rank 0.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import os
import queue
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch.distributed as dist

from ..data.discovery import FoundImage, find_images, is_dataset_folder
from ..errors import Cancelled, InputError, MedVAEError, ModelError, OutputError
from ..imaging.atomic import atomic_write_text, first_line, full_suffix
from ..imaging.io import READ_SUFFIXES
from ..imaging.normalization import Normalization
from ..imaging.volume import Volume
from ..models.checkpoints import file_sha256
from ..runtime.progress import Progress, run
from .latents import Latent, save_latent, sidecar_path
from .pipeline import (
    CodecOptions,
    SliceJob,
    encode_slices_steps,
    encode_steps,
    prepare_slices,
    project_latent,
)

FAILURES_FILE = "failures.csv"
LATENT_SUFFIX = ".latent.nii.gz"
_ABORTS = (ModelError, OutputError, Cancelled)  # problems of the run, not of one input
_GATHER_TIMEOUT = datetime.timedelta(days=7)  # ranks with short shards wait for the longest one


def latent_path(item: FoundImage) -> PurePosixPath:
    """An input's latent path under the output folder: its relative path, own suffix replaced."""
    name, suffix = item.relative.name, full_suffix(item.relative.name)
    if suffix in READ_SUFFIXES and not item.path.is_dir():
        name = name[: -len(suffix)]
    return item.relative.with_name(name + LATENT_SUFFIX)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The payload of each input's Progress, whose stage says what happened to it: "encoded",
    "skipped" (already encoded from the same input and model) or "failed"."""

    item: FoundImage
    target: Path
    latent: Latent | None = None
    error: str | None = None


@dataclasses.dataclass
class Summary:
    """What a run (or one rank's shard) did: counts, and each failed input with its error."""

    encoded: int = 0
    skipped: int = 0
    total: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, error)


def is_dataset(items: Sequence[str | Path]) -> bool:
    """True for a CSV list or a folder holding subfolders or non-DICOM images (else: one series)."""
    return any(
        Path(i).suffix.lower() == ".csv" or (Path(i).is_dir() and is_dataset_folder(Path(i)))
        for i in items
    )


def find_inputs(items: Sequence[str | Path]) -> list[FoundImage]:
    """Files, series folders, dataset folders and CSV lists -> inputs sorted by relative path.

    `InputError` when nothing is found or when two inputs would share one latent path.
    """
    found = find_images(items)
    if not found:
        raise InputError(f"{' '.join(map(str, items))}: no images found")
    seen: dict[PurePosixPath, FoundImage] = {}
    for item in found:
        other = seen.setdefault(latent_path(item), item)
        if other is not item:
            raise InputError(
                f"{item.path}: would be encoded to {latent_path(item)}, as {other.path} is "
                "(rename one, or list them from a common folder or CSV)"
            )
    return sorted(found, key=lambda i: i.relative.as_posix())


def source_record(item: FoundImage) -> dict:
    """What identifies the input's bytes: size and sha256 (a series: over its files, see above)."""
    if not item.path.exists():
        raise InputError(f"{item.path}: file not found")
    try:
        return _record(item)
    except OSError as e:
        raise InputError(f"{item.path}: cannot read ({e.strerror})") from None


def _record(item: FoundImage) -> dict:
    if not item.path.is_dir():
        return {"path": str(item.relative), "size": item.path.stat().st_size,
                "sha256": file_sha256(item.path)}
    digest, size = hashlib.sha256(), 0
    for f in sorted(item.files, key=lambda f: f.relative_to(item.path).as_posix()):
        n = f.stat().st_size
        size += n
        digest.update(f"{f.relative_to(item.path).as_posix()}\0{n}\0{file_sha256(f)}\n".encode())
    return {"path": str(item.relative), "size": size, "sha256": digest.hexdigest(),
            "files": len(item.files)}


@dataclasses.dataclass(frozen=True)
class Encoder:
    """How a run turns images into latents: the model for an image's ndim, the codec options, the
    normalisation (None: fitted to each image), the projected flag and what drives codec steps."""

    model_for: Callable[[int], Any]
    options: CodecOptions
    normalization: Callable[[Volume], Normalization | None] = lambda volume: None
    projected: bool = False
    drive: Callable[[Any], Any] = run

    def prepare(self, volume: Volume) -> _Prepared:
        """Normalised, padded 2D slices keyed by model and slice shape (they can share batches
        with other inputs of the same key); a 3D model's volume, or sampling, goes alone."""
        model = self.model_for(volume.ndim)
        if model.spatial_dims != 2 or self.options.sample:  # samples are seeded per input
            return _Prepared(model, volume, None, None)
        job = prepare_slices(volume, model, self.options, normalization=self.normalization(volume))
        return _Prepared(model, volume, job, (id(model), job.stack.shape[1:]))

    def encode(self, prepared: Sequence[_Prepared]) -> list[Latent]:
        """Latents of inputs with one key (one batch of slices), or of one input going alone."""
        first = prepared[0]
        if first.job is None:
            steps = encode_steps(first.volume, first.model, self.options,
                                 normalization=self.normalization(first.volume))
            latents = [self.drive(steps)]
        else:
            latents = self.drive(encode_slices_steps([p.job for p in prepared], first.model,
                                                     self.options))
        if self.projected:
            latents = [project_latent(z, first.model) for z in latents]
        return latents


@dataclasses.dataclass(frozen=True)
class _Prepared:
    model: Any
    volume: Volume
    job: SliceJob | None  # None: encoded on its own
    key: tuple | None

    @property
    def slices(self) -> int:
        return 1 if self.job is None else len(self.job.stack)


@dataclasses.dataclass(frozen=True)
class _Fetched:
    """What the reader found for one input: its source record, the (ndim, model, weights sha256)
    of a matching earlier latent, the image (not read when an earlier latent may be kept), or
    the error that stopped it."""

    item: FoundImage
    target: Path
    record: dict | None = None
    previous: tuple | None = None
    volume: Volume | None = None
    error: BaseException | None = None


def encode_dataset(
    jobs: Sequence[tuple[FoundImage, Path]],
    read: Callable[[FoundImage], Volume],
    encoder: Encoder,
    identity: Callable[[int], tuple[str, str | None]] | None = None,
    *,
    keep_going: bool = True,
    prefetch: int = 2,
) -> Generator[Progress, None, Summary]:
    """Encode each (input, target latent path), yielding progress; returns the counts and failures.

    A reader thread hashes and ``read``s up to ``prefetch`` inputs ahead of the model (0: no
    thread); 2D inputs of one padded slice shape go through the model together, up to the
    options' ``batch_size`` slices a call. With ``identity`` (image ndim -> model name and weights
    sha256 of the model this run uses for it) a target whose sidecar matches the input, model and
    ``projected`` is skipped. Without ``keep_going`` the first failure is raised. Closing the
    generator stops the reader thread.
    """
    summary, counter = Summary(total=len(jobs)), itertools.count(1)
    batch = max(1, encoder.options.batch_size)
    pending: list[tuple[_Fetched, _Prepared]] = []

    def failed(f: _Fetched, e: Exception) -> Progress:
        if not keep_going:
            raise e
        message = _one_line(e, f.item.path)
        summary.failures.append((str(f.item.path), message))
        return Progress(next(counter), len(jobs), "failed", {"input": str(f.item.relative)},
                        Outcome(f.item, f.target, error=message))

    def flush() -> Generator[Progress, None, None]:
        group, pending[:] = list(pending), []
        try:
            results = list(zip(group, encoder.encode([p for _, p in group])))
        except _ABORTS:
            raise
        except Exception as e:
            if len(group) == 1:
                yield failed(group[0][0], e)
                return
            results = []  # find which input fails: each alone
            for f, p in group:
                try:
                    results.append(((f, p), encoder.encode([p])[0]))
                except _ABORTS:
                    raise
                except Exception as one:
                    yield failed(f, one)
        for (f, _), latent in results:
            latent.source = f.record
            _remove(sidecar_path(f.target))  # never a new latent beside an old sidecar
            save_latent(latent, f.target)
            summary.encoded += 1
            yield Progress(next(counter), len(jobs), "encoded", {"input": str(f.item.relative)},
                           Outcome(f.item, f.target, latent=latent))

    fetched = _read_ahead(jobs, read, encoder.projected if identity else None, prefetch)
    try:
        for f in fetched:
            try:
                if f.error is not None:
                    raise f.error
                if f.previous is not None and f.previous[1:] == identity(f.previous[0]):
                    summary.skipped += 1
                    yield Progress(next(counter), len(jobs), "skipped", {"input": str(f.item.relative)},
                                   Outcome(f.item, f.target))
                    continue
                prepared = encoder.prepare(f.volume if f.volume is not None else read(f.item))
            except _ABORTS:
                raise
            except Exception as e:
                yield failed(f, e)
                continue
            if pending and (prepared.key is None or prepared.key != pending[0][1].key):
                yield from flush()
            pending.append((f, prepared))
            if prepared.key is None or sum(p.slices for _, p in pending) >= batch:
                yield from flush()
        if pending:
            yield from flush()
    finally:
        fetched.close()
    return summary


def _read_ahead(
    jobs: Sequence[tuple[FoundImage, Path]],
    read: Callable[[FoundImage], Volume],
    projected: bool | None,
    depth: int,
) -> Generator[_Fetched, None, None]:
    """Each job's `_Fetched`, in order, read by a thread up to ``depth`` inputs ahead (0: here).

    ``projected`` None: no resume check. Closing the generator stops and joins the thread.
    """
    def fetch(item: FoundImage, target: Path) -> _Fetched:
        try:
            record = source_record(item)  # before reading: a later change means encoding again
            previous = None if projected is None else _previous(target, record, projected)
            volume = read(item) if previous is None else None
            return _Fetched(item, target, record, previous, volume)
        except BaseException as e:  # handed to the consumer, which records or raises it
            return _Fetched(item, target, error=e)

    if depth < 1:
        for item, target in jobs:
            yield fetch(item, target)
        return
    ready: queue.Queue[_Fetched] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        for item, target in jobs:
            f = fetch(item, target)
            while not stop.is_set():
                try:
                    ready.put(f, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    reader = threading.Thread(target=work, name="medvae-dataset-reader", daemon=True)
    reader.start()
    try:
        for _ in jobs:
            yield ready.get()
    finally:
        stop.set()
        reader.join()


def write_failures(out: Path, failures: Sequence[tuple[str, str]]) -> Path:
    """``out/failures.csv`` (path, error) holding this run's failures; removed when there are none."""
    path = out / FAILURES_FILE
    if not failures:
        _remove(path)
        return path
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows([("path", "error"), *sorted(failures)])
    return atomic_write_text(path, text.getvalue())


def shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; joins a gloo group for `gather` when > 1."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if not dist.is_initialized():
            try:
                dist.init_process_group("gloo", timeout=_GATHER_TIMEOUT)
            except Exception as e:
                raise MedVAEError(
                    f"rank {rank} of {world}: cannot join the other ranks ({first_line(e)}); "
                    "launch several processes with torchrun"
                ) from None
    return rank, world


def gather(summary: Summary, world: int) -> Summary:
    """Every rank's counts and failures summed (all ranks get the total); unchanged when alone."""
    if world == 1:
        return summary
    parts: list[Summary | None] = [None] * world
    dist.all_gather_object(parts, summary)
    dist.destroy_process_group()
    return Summary(
        encoded=sum(p.encoded for p in parts),
        skipped=sum(p.skipped for p in parts),
        total=sum(p.total for p in parts),
        failures=sorted(f for p in parts for f in p.failures),
    )


# -- finding inputs ------------------------------------------------------------------------------


# -- resume and failures -------------------------------------------------------------------------


def _previous(target: Path, record: dict, projected: bool) -> tuple | None:
    """(image ndim, model, weights sha256) of the latent at ``target`` when its sidecar records
    this input and this ``projected`` flag; None when it must be encoded (again)."""
    side = sidecar_path(target)
    if not (target.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
        old, ndim = meta["source"], len(meta["image_shape"])
    except Exception:
        return None  # no sidecar we can trust: encode again
    if old != record or bool(meta.get("projected")) != projected:
        return None
    return ndim, meta.get("model"), meta.get("weights_sha256")


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot replace it ({e.strerror})") from None


def _one_line(exc: BaseException, path: Path) -> str:
    message = first_line(exc)
    if not isinstance(exc, MedVAEError):
        message = f"{type(exc).__name__}: {message}"
    return message if str(path) in message else f"{path}: {message}"
