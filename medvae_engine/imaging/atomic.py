"""Atomic file writes: nobody sees a half-written output, and a failure leaves nothing behind.

Every writer in the project goes through `atomic_write`: the content is written to a hidden
temporary name in the destination folder (keeping the final suffix, so libraries that choose the
format from the suffix still work) and then moved into place with `os.replace`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from medvae_engine.errors import MedVAEError, OutputError

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def full_suffix(path: str | Path) -> str:
    """The lower-case format suffix of ``path``: ``.nii.gz`` when compressed, else the last one."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if not suffixes:
        return ""
    if suffixes[-1] in _COMPRESSION_SUFFIXES and len(suffixes) >= 2:
        return suffixes[-2] + suffixes[-1]
    return suffixes[-1]


def temporary_sibling(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` keeping its suffix: ``.scan.tmp-1a2b3c4d.nii.gz``."""
    path = Path(path)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    while True:
        candidate = path.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{suffix}")
        if not candidate.exists():
            return candidate


def atomic_write(path: str | Path, write_fn: Callable[[Path], object]) -> Path:
    """Call ``write_fn(tmp_path)`` then move the result onto ``path``; clean up on any failure.

    OS errors (unwritable folder, full disk) become `OutputError` naming ``path``; other exceptions
    propagate unchanged. Missing parent folders are created.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create folder {path.parent} ({_reason(exc)})") from None
    tmp = temporary_sibling(path)
    try:
        write_fn(tmp)
        if not tmp.exists():
            raise OutputError(f"{path}: the writer produced no file")
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create files private
        os.replace(tmp, path)
    except MedVAEError:
        _remove_quietly(tmp)
        raise
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _reason(exc: OSError) -> str:
    return exc.strerror or first_line(exc)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name): for one-line user errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
