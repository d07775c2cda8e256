"""The runtime layer: the one CLI progress driver, the shared schedule and device rule, and the
layering rule that runtime imports nothing above it."""

from __future__ import annotations

import ast
import math
import re
import sys
import time
from pathlib import Path

import pytest

import medvae_engine.runtime as runtime_package
from medvae_engine.runtime.cli_progress import drive
from medvae_engine.runtime.distributed import rank_device
from medvae_engine.runtime.loop import warmup_cosine
from medvae_engine.runtime.progress import Progress, rebased, run

ALLOWED_THIRD_PARTY = {"torch", "numpy", "tqdm"}


def _slow_units(n: int, seconds: float, result: str = "finished"):
    for i in range(1, n + 1):
        time.sleep(seconds)
        yield Progress(i, n, "work", info={"loss": 1.0 / i, "input": f"case{i}"})
    return result


def _bar_lines(text: str) -> list[str]:
    return [line for chunk in text.split("\n") for line in chunk.split("\r") if line.strip()]


def test_driver_shows_rate_and_eta_from_the_first_unit(capsys):
    result = drive(_slow_units(4, 0.2), "fake job", unit="case", keys=("loss",))
    assert result == "finished"
    lines = _bar_lines(capsys.readouterr().err)
    first = next(line for line in lines if "1/4" in line)
    # elapsed<remaining: after one unit of 0.2 s, three remain: an ETA of 0-1 s, not "?"
    assert "<?" not in first and "<00:00" in first and "case/s" in first
    assert "loss=1" in first and "fake job: work" in first
    assert "4/4" in lines[-1] and "loss=0.25" in lines[-1]


def test_driver_rate_counts_from_the_start_not_the_first_step(capsys):
    """A job whose first unit takes 0.5 s: the first line's rate must say so (about 2 units a
    second, two remaining units about 1 s), not the near-zero time since the bar was drawn."""
    drive(_slow_units(3, 0.5), "slow", unit="case")
    first = next(line for line in _bar_lines(capsys.readouterr().err) if "1/3" in line)
    rate = float(re.search(r"([0-9.]+)case/s", first).group(1))
    assert 1.0 < rate < 2.1 and ("<00:01" in first or "<00:00" in first)


def test_driver_is_silent_for_other_ranks_and_for_piped_codec_commands(capsys, monkeypatch):
    assert drive(_slow_units(2, 0), "quiet", terminal_only=True) == "finished"
    monkeypatch.setenv("RANK", "1")
    seen = []
    assert drive(_slow_units(2, 0), "rank 1", report=seen.append) == "finished"
    assert capsys.readouterr().err == "" and [p.done for p in seen] == [1, 2]


def test_rebased_parts_count_as_units_of_the_whole_job():
    def whole():
        first = yield from rebased(_slow_units(2, 0, "a"), 0, 5, part="a")
        second = yield from rebased(_slow_units(3, 0, "b"), 2, 5, part="b")
        return first + second

    seen = []
    assert run(whole(), seen.append) == "ab"
    assert [(p.done, p.total, p.info["part"]) for p in seen] == [
        (1, 5, "a"), (2, 5, "a"), (3, 5, "b"), (4, 5, "b"), (5, 5, "b")]


def test_warmup_cosine_known_values():
    assert warmup_cosine(0, 110, 1e-3, warmup_steps=10) == pytest.approx(1e-4)
    assert warmup_cosine(9, 110, 1e-3, warmup_steps=10) == pytest.approx(1e-3)
    assert warmup_cosine(60, 110, 1e-3, 10, min_lr=1e-4) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert warmup_cosine(110, 110, 1e-3, 10, min_lr=1e-4) == pytest.approx(1e-4)
    assert warmup_cosine(500, 1000, 2e-4, min_lr=2e-4) == 2e-4  # constant
    # the SR schedule before it moved here: min_lr + (lr - min_lr) (1 + cos(pi step / steps)) / 2
    for step in range(0, 100, 7):
        old = 1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * step / 100))
        assert warmup_cosine(step, 100, 1e-4, min_lr=1e-6) == pytest.approx(old, rel=1e-12)


def test_one_device_rule_for_training_and_dataset_encoding():
    assert rank_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert rank_device("cuda", {}) == "cuda"
    assert rank_device("cuda:0", {"LOCAL_RANK": "3"}) == "cuda:0"  # an explicit index is kept
    assert rank_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"
    assert rank_device("auto", {}) in ("cpu", "cuda")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import in a file, top-level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_runtime_imports_nothing_above_it():
    folder = Path(runtime_package.__file__).parent
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = []
    for path in sorted(folder.glob("*.py")):
        for level, module in _imports(path):
            top = module.split(".")[0]
            if level == 0 and top not in stdlib | ALLOWED_THIRD_PARTY:
                bad.append(f"{path.name}: import {module}")
            if level == 2 and top != "errors":  # from ..X: only the errors module
                bad.append(f"{path.name}: from ..{module}")
            if level > 2:
                bad.append(f"{path.name}: from {'.' * level}{module}")
    assert bad == []


def test_the_layering_check_sees_a_forbidden_import(tmp_path):
    (tmp_path / "bad.py").write_text("from ..codec.pipeline import encode\nimport scipy\n")
    assert _imports(tmp_path / "bad.py") == [(2, "codec.pipeline"), (0, "scipy")]


def test_driver_restarts_the_bar_when_a_stage_counts_from_its_start(capsys):
    """Loading a model (3 steps) then encoding 4 windows in one generator: the encode stage gets
    its own rate and ETA instead of a negative rate from counting backwards."""
    def job():
        for i in range(4):
            yield Progress(i, 3, "load weights")
        yield from _slow_units(4, 0.05)
        return "ok"

    assert drive(job(), "reconstruct") == "ok"
    lines = _bar_lines(capsys.readouterr().err)
    first = next(line for line in lines if "1/4" in line)
    assert "reconstruct: work" in first and "<?" not in first and "-" not in first.split("|")[2]
    assert "4/4" in lines[-1] and "100%" in lines[-1]
