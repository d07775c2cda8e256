"""Helpers for reader-study tests: prepared study folders without images (sessions and analysis
only need study.yaml, the key and the answer logs)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medvae_engine.study.create import default_key_path
from medvae_engine.study.spec import DEFAULT_QUESTIONS


def write_study(root: Path, n_items: int, *, questions=None, seed: int = 7, **settings) -> Path:
    """A minimal prepared study folder with ``n_items`` items (image files are not needed);
    ``settings`` adds study.yaml keys such as ``navigation``."""
    root.mkdir(parents=True, exist_ok=True)
    items = [
        {"id": f"item_{i:03d}", "images": [f"images/item_{i:03d}_a.nii.gz",
                                           f"images/item_{i:03d}_b.nii.gz"]}
        for i in range(1, n_items + 1)
    ]
    data = {
        "name": "test-study",
        "seed": seed,
        "display": "blinded_ab",
        "questions": [q.to_dict() for q in (questions or DEFAULT_QUESTIONS)],
        "items": items,
        **settings,
    }
    (root / "study.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root


def write_key(root: Path, assignment: dict[str, tuple[str, str]], methods: list[str]) -> Path:
    """A key mapping item ids to (case, method), at its default place beside the study folder."""
    key = {
        "study": "test-study",
        "methods": methods,
        "items": {i: {"case": c, "method": m} for i, (c, m) in assignment.items()},
    }
    path = default_key_path(root)
    path.write_text(json.dumps(key))
    return path


def real_originals(folder: Path) -> Path:
    """Four small real images: pydicom's CT and MR slices and two slices of nibabel's anatomical
    MRI saved as NIfTI with their real geometry."""
    import shutil

    import nibabel.testing
    import pydicom.data

    from medvae_engine.imaging.io import read_volume, write_volume
    from medvae_engine.imaging.volume import Volume

    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom.data.get_testdata_file(name), folder / name.lower())
    brain = read_volume(Path(nibabel.testing.data_path) / "anatomical.nii")
    for z in (8, 14):
        affine = brain.affine.copy()
        affine[:3, 3] += affine[:3, 2] * z
        write_volume(Volume(brain.array[:, :, z], affine, "mri", {}), folder / f"brain_z{z}.nii.gz")
    return folder
