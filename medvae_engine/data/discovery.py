"""Finding images: files, DICOM series folders, dataset folders (walked recursively) and CSV lists.

One walk for every feature that takes many images (dataset encoding, training sources): a folder
directly holding DICOM images is one series, any other image file is one image, and each keeps
its path relative to the folder or CSV it was found through (so outputs can mirror the layout).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pydicom

from ..errors import InputError
from ..imaging.io import file_format

PATH_COLUMNS = ("path", "file", "filename", "image")


@dataclasses.dataclass(frozen=True)
class FoundImage:
    """One image: a file or a DICOM series folder, its path under the root it was found through,
    the files it is read from, and the frame and modality a CSV row may give."""

    path: Path
    relative: PurePosixPath
    files: tuple[Path, ...]
    frame: int | None = None
    modality: str | None = None


def find_images(items: Sequence[str | Path]) -> list[FoundImage]:
    """Files, series folders, dataset folders and CSV lists -> images in the order found."""
    found: list[FoundImage] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() == ".csv":
            found += csv_images(path)
        elif path.is_dir() and is_dataset_folder(path):
            found += _walk(path)
        else:
            found.append(_direct(path, PurePosixPath(Path(os.path.abspath(path)).name)))
    return found


def is_dataset_folder(folder: Path) -> bool:
    """A folder holding sub-folders or non-DICOM images (not one DICOM series)."""
    return any(
        not p.name.startswith(".")
        and (p.is_dir() or (p.is_file() and file_format(p) not in (None, "dicom")))
        for p in folder.iterdir()
    )


def _walk(root: Path) -> list[FoundImage]:
    """Every image file under ``root``, and every folder directly holding DICOM images as a series."""
    found: list[FoundImage] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here, is_series = Path(folder), False
        for name in sorted(files):
            file = here / name
            kind = None if name.startswith(".") else file_format(file)
            if kind == "dicom":
                is_series = is_series or not _without_image(file)
            elif kind is not None:
                found.append(FoundImage(file, _relative(file, root), (file,)))
        if is_series:
            name = _relative(here, root) if here != root else Path(os.path.abspath(root)).name
            found.append(_direct(here, PurePosixPath(name)))
    return found


def _without_image(file: Path) -> bool:
    """True for a readable DICOM object holding no image (DICOMDIR, report, presentation state);
    an unreadable one counts as an image, so that reading it reports the problem."""
    try:
        ds = pydicom.dcmread(file, defer_size=1024)
    except Exception:
        return False
    return not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _direct(path: Path, relative: PurePosixPath) -> FoundImage:
    """A file or series folder named directly (argument or CSV row)."""
    if path.is_dir():
        files = tuple(
            Path(folder) / name
            for folder, _, names in sorted(os.walk(path))
            for name in sorted(names)
            if not name.startswith(".") and file_format(Path(folder) / name) == "dicom"
        )
        return FoundImage(path, relative, files)
    return FoundImage(path, relative, (path,))


def csv_images(path: Path) -> list[FoundImage]:
    """The images a CSV list names: one file or DICOM series folder a row, relative to the CSV's
    folder; a header row (a ``path``, ``file``, ``filename`` or ``image`` column, optional
    ``frame`` and ``modality`` columns) or plain paths in the first column."""
    if not path.is_file():
        raise InputError(f"{path}: CSV file not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: CSV file is empty")
    header = [h.lower() for h in rows[0]]
    path_column = next((i for i, h in enumerate(header) if h in PATH_COLUMNS), None)
    if path_column is None:
        records = [{"path": r[0]} for r in rows]
    else:
        header[path_column] = "path"
        records = [dict(zip(header, r, strict=False)) for r in rows[1:]]
    base = Path(os.path.abspath(path.parent))
    found = []
    for rec in records:
        listed = Path(rec["path"]).expanduser()
        listed = Path(os.path.abspath(listed if listed.is_absolute() else base / listed))
        try:
            frame = int(rec["frame"]) if rec.get("frame") else None
        except ValueError:
            raise InputError(f"{path}: frame {rec['frame']!r} of {listed.name} is not an integer") from None
        item = _direct(listed, _relative(listed, base))
        found.append(dataclasses.replace(item, frame=frame, modality=rec.get("modality") or None))
    return found


def _relative(path: Path, root: Path) -> PurePosixPath:
    """``path`` under ``root``; a path outside it keeps its absolute form without the anchor."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == ".." or rel.startswith(".." + os.sep):
        return PurePosixPath(*Path(os.path.abspath(path)).parts[1:])
    return PurePosixPath(Path(rel).as_posix())
