"""What pyproject declares holds: core dependencies cover core commands, the licence file exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # standard library from Python 3.11

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_monai_is_a_core_dependency_for_cad_and_bench_efficiency():
    """`medvae cad` and `medvae bench efficiency` build MONAI classifiers without any extra."""
    source = (ROOT / "medvae_engine" / "cad" / "models.py").read_text()
    assert "from monai" in source
    assert "monai" in requirement_names(PROJECT["dependencies"])
    assert "monai" not in PROJECT.get("optional-dependencies", {})


def test_license_file_is_the_mit_licence_pyproject_declares():
    assert PROJECT["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 napari-medvae developers" in text
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
