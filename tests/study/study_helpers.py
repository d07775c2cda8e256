"""Helpers for reader-study tests: prepared study folders without images (sessions and analysis
only need study.yaml, the key and the answer logs)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

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
    """A key mapping item ids to (case, method)."""
    key = {
        "study": "test-study",
        "methods": methods,
        "items": {i: {"case": c, "method": m} for i, (c, m) in assignment.items()},
    }
    path = root / "coordinator" / "key.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(key))
    return path
