"""Build a blinded study folder: neutral item images, a checksummed manifest, a private key.

Layout of a study folder (handed to readers as it is)::
    study.yaml            what readers' tools read: questions, display, items (no method names)
    manifest.json         every file readers get with its sha256 and shape
    images/item_007_a.nii.gz, images/item_007_b.nii.gz ...
    answers/<reader>.jsonl    created by reading sessions

and, outside it, the coordinator's private key ``STUDY.key.json`` beside the folder (or ``--key``):
item -> case, method, side of the original, source checksums, and the spec as given.

Item numbers come from a seeded shuffle so they reveal neither case nor method; every image is
written as float32 NIfTI with the original's geometry and without any metadata, so neither the file
nor its header tells patient or method apart. Both images of an item go through the same intensity
window (the codec's: CT [-1000, 1000] HU, else the original's range), so their values cannot tell
the original from the candidate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Generator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medvae_engine.codec.pipeline import reconstruct
from medvae_engine.codec.spec import load_codec
from medvae_engine.data.files import image_stem
from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging.atomic import atomic_write_text
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.normalization import fit_normalization
from medvae_engine.imaging.volume import Volume
from medvae_engine.runtime.progress import Progress, run
from medvae_engine.study.randomize import original_sides, shuffled
from medvae_engine.study.spec import (
    KEY_SUFFIX,
    MANIFEST_FILE,
    STUDY_FILE,
    CaseSpec,
    StudySpec,
    keys_inside,
    parse_questions,
    parse_spec,
)

IMAGE_DIR = "images"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, or of all files below a folder (DICOM series) in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _image_entries(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    entries = {image_stem(p): p for p in sorted(folder.iterdir()) if not p.name.startswith(".")}
    if not entries:
        raise InputError(f"{folder}: no images found")
    return entries


def spec_from_folders(
    originals: str | Path,
    methods: dict[str, Any],
    *,
    name: str = "reader-study",
    seed: int = 0,
    display: str = "side_by_side",
    questions: Any = None,
    navigation: bool = True,
    lock_after_submit: bool = True,
) -> StudySpec:
    """A spec pairing each original with the same-named file in each method folder, or a codec.

    ``methods`` maps a method name to a folder path or to {codec: NAME, factor: F} / {model: NAME}.
    Every original needs a match in every method folder; all gaps are reported in one error.
    """
    originals_dir = Path(originals)
    found = _image_entries(originals_dir)
    folders = {m: _image_entries(Path(v)) for m, v in methods.items() if isinstance(v, str | Path)}
    missing = [
        f"{m}/{stem}" for m, entries in folders.items() for stem in found if stem not in entries
    ]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InputError(
            f"{len(missing)} candidate images missing for originals in {originals_dir}: {shown}"
        )
    cases = []
    for stem, path in found.items():
        candidates = {
            m: str(folders[m][stem].resolve()) if m in folders else v for m, v in methods.items()
        }
        cases.append({"id": stem, "original": str(path.resolve()), "candidates": candidates})
    data = {"name": name, "seed": seed, "display": display, "navigation": navigation,
            "lock_after_submit": lock_after_submit, "cases": cases}
    if questions is not None:
        data["questions"] = [q.to_dict() for q in parse_questions(questions, "questions", display)]
    return parse_spec(data, str(originals_dir), Path.cwd())


def generate_candidate(volume: Volume, source: dict[str, Any]) -> Volume:
    """Reconstruct ``volume`` with a model ({model: NAME[, weights]}) or any codec ({codec: SPEC})."""
    if "model" in source:
        codec = load_codec(source["model"], weights=source.get("weights"))
    else:
        codec = load_codec(source["codec"], spatial_dims=int(source.get("spatial_dims", volume.ndim)))
    result = reconstruct(volume, codec)
    if not isinstance(result, Volume):
        raise TypeError(f"reconstruct returned {type(result).__name__}, expected a Volume")
    return result


def missing_files(spec: StudySpec) -> list[str]:
    """Input files the spec names that do not exist, one line each."""
    problems = []
    for case in spec.cases:
        paths = [("original", case.original)]
        paths += [(m, v) for m, v in case.candidates.items() if isinstance(v, str)]
        problems += [
            f"case {case.id!r} {what}: {spec.resolve(p)}"
            for what, p in paths
            if not spec.resolve(p).exists()
        ]
    return problems


def display_window(original: Volume) -> tuple[float, float]:
    """The intensity window of the codec's normalisation of the original (CT: [-1000, 1000] HU;
    else its min-max), through which both images of an item are prepared."""
    norm = fit_normalization(original.array, original.modality)
    return norm.lo, norm.hi


def _prepared(volume: Volume, reference: Volume, window: tuple[float, float]) -> Volume:
    """The volume clipped to ``window`` as float32 on the reference's geometry, no metadata."""
    array = np.clip(np.asarray(volume.array, dtype=np.float32), window[0], window[1])
    return Volume(array.astype(np.float32), reference.affine.copy(), reference.modality, {})


def _read(path: Path, what: str) -> Volume:
    try:
        return read_volume(path, keep_phi=False)
    except InputError:
        raise
    except Exception as exc:  # a reader library's own error: say which case/method failed
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None


def _case_volumes(spec: StudySpec, case: CaseSpec) -> Iterator[tuple[str, Volume, Volume, Any]]:
    original = _read(spec.resolve(case.original), f"original of case {case.id!r}")
    for method, source in case.candidates.items():
        if isinstance(source, str):
            candidate = _read(spec.resolve(source), f"method {method!r} of case {case.id!r}")
        else:
            candidate = generate_candidate(original, source)
        if candidate.shape != original.shape:
            raise InputError(
                f"{spec.resolve(source) if isinstance(source, str) else source}: method {method!r} "
                f"of case {case.id!r} has shape {candidate.shape}, the original {original.shape}"
            )
        yield method, original, candidate, source


def _public_study(spec: StudySpec, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "seed": spec.seed,
        "display": spec.display,
        "navigation": spec.navigation,
        "lock_after_submit": spec.lock_after_submit,
        "questions": [q.to_dict() for q in spec.questions],
        "items": [{"id": it["id"], "images": it["images"], "window": it["window"]} for it in items],
    }


def iter_create_study(
    spec: StudySpec, output: str | Path, key_path: str | Path | None = None
) -> Generator[Progress, None, Path]:
    """Build the study folder at ``output``, yielding Progress per item (its id in ``info``);
    returns the folder.

    Everything is built in a hidden sibling folder and moved into place at the end, so a failure
    leaves nothing at ``output``. The key goes beside the folder (``STUDY.key.json``) unless
    ``key_path`` puts it elsewhere; never inside the folder handed to readers.
    """

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputError(f"{output}: already exists; choose a new folder for the study")
    key_path = Path(key_path) if key_path is not None else default_key_path(output)
    if key_path.resolve().is_relative_to(output.resolve()):
        raise OutputError(f"{key_path}: the key must not be inside the study folder {output} "
                          "that readers get")
    if key_path.exists():
        raise OutputError(f"{key_path}: a study key already exists there; choose another --key")
    missing = missing_files(spec)
    if missing:
        raise InputError(f"{len(missing)} input files missing: " + "; ".join(missing[:10]))
    pairs = [(case.id, method) for case in spec.cases for method in case.candidates]
    numbered = shuffled(pairs, spec.seed, "items")
    width = max(3, len(str(len(pairs))))
    item_of = {pair: f"item_{n:0{width}d}" for n, pair in enumerate(numbered, start=1)}
    sides = dict.fromkeys(numbered, 0)
    if spec.display == "blinded_ab":  # balanced within each method
        for method in spec.methods:
            mine = [pair for pair in numbered if pair[1] == method]
            sides.update(zip(mine, original_sides(len(mine), spec.seed, f"sides:{method}"),
                             strict=True))

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / IMAGE_DIR).mkdir(parents=True)
    key_items: dict[str, Any] = {}
    files: dict[str, Any] = {}
    try:
        done = 0
        for case in spec.cases:
            for method, original, candidate, source in _case_volumes(spec, case):
                item_id = item_of[(case.id, method)]
                side = sides[(case.id, method)]
                window = display_window(original)
                shown = [_prepared(v, original, window) for v in (original, candidate)]
                if side == 1:
                    shown.reverse()
                names = [f"{IMAGE_DIR}/{item_id}_{s}.nii.gz" for s in "ab"]
                for name, volume in zip(names, shown, strict=True):
                    write_volume(volume, staging / name)
                    files[name] = {
                        "sha256": sha256_file(staging / name),
                        "shape": list(volume.shape),
                    }
                key_items[item_id] = {
                    "window": list(window),
                    "case": case.id,
                    "method": method,
                    "original_side": "ab"[side],
                    "images": names,
                    "original": str(spec.resolve(case.original)),
                    "original_sha256": sha256_file(spec.resolve(case.original)),
                    "candidate": str(spec.resolve(source)) if isinstance(source, str) else source,
                    "candidate_sha256": (
                        sha256_file(spec.resolve(source)) if isinstance(source, str) else None
                    ),
                    "affine_differs": not np.allclose(candidate.affine, original.affine, atol=1e-3),
                }
                done += 1
                yield Progress(done, len(pairs), "create", info={"item": item_id})
        items = sorted(
            ({"id": i, "images": k["images"], "window": k["window"]} for i, k in key_items.items()),
            key=lambda it: it["id"],
        )
        study_text = yaml.safe_dump(_public_study(spec, items), sort_keys=False, allow_unicode=True)
        (staging / STUDY_FILE).write_text(study_text, encoding="utf-8")
        files[STUDY_FILE] = {"sha256": sha256_file(staging / STUDY_FILE)}
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = {"study": spec.name, "created": created, "files": files}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        key = {
            "study": spec.name,
            "created": created,
            "seed": spec.seed,
            "display": spec.display,
            "methods": spec.methods,
            "cases": [c.id for c in spec.cases],
            "manifest_sha256": sha256_file(staging / MANIFEST_FILE),
            "items": dict(sorted(key_items.items())),
            "spec": spec.to_dict(),
        }
        # the key first: a study without its key could never be analysed
        atomic_write_text(key_path, json.dumps(key, indent=1))
        if output.exists():
            output.rmdir()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def create_study(spec: StudySpec, output: str | Path, key_path: str | Path | None = None) -> Path:
    """Build the study folder (see ``iter_create_study``) and return its path."""
    return run(iter_create_study(spec, output, key_path))


def default_key_path(study_dir: str | Path) -> Path:
    """Where ``create`` puts the private key unless told otherwise: ``STUDY.key.json`` beside the
    study folder, outside what readers get."""
    folder = Path(study_dir).resolve()
    return folder.parent / f"{folder.name}{KEY_SUFFIX}"


def load_key(path: str | Path) -> dict[str, Any]:
    """Read a study key (item -> case, method, original side)."""
    path = Path(path)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: study key not found (give --key PATH)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the study key ({exc})") from None
    if not isinstance(key, dict) or not isinstance(key.get("items"), dict):
        raise InputError(f"{path}: not a study key (no 'items')")
    return key


def validate_study(study_dir: str | Path) -> list[str]:
    """Problems with a study folder: files missing or changed since creation, or an answer key
    inside it (empty when sound and safe to hand to readers)."""
    root = Path(study_dir)
    keys = [f"{path}: answer key inside the study folder; readers must not get it (move it out)"
            for path in keys_inside(root)]
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{root / MANIFEST_FILE}: missing; not a study folder", *keys]
    except (OSError, ValueError) as exc:
        return [f"{root / MANIFEST_FILE}: unreadable ({exc})", *keys]
    problems = keys
    for name, entry in manifest.get("files", {}).items():
        path = root / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{path}: changed since the study was created (checksum differs)")
    return problems
