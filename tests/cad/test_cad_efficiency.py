"""Efficiency benchmark: the out-of-memory-safe batch search and a tiny command run."""

import argparse
import json

import pytest

from medvae_engine.benchmarks.efficiency import input_shape, largest_fitting_batch, step_peak_mb
from medvae_engine.cli import bench as cli_bench


def _mock(limit: int, error: type[BaseException] | None):
    calls = []

    def fits(batch: int) -> bool:
        calls.append(batch)
        if batch > limit:
            if error is not None:
                raise error("CUDA out of memory. Tried to allocate 2.00 GiB")
            return False
        return True

    return fits, calls


@pytest.mark.parametrize("error", [RuntimeError, MemoryError, None])
def test_search_stops_at_the_last_fitting_power_of_two(error):
    fits, calls = _mock(limit=100, error=error)
    best, trials = largest_fitting_batch(fits, max_batch=4096)
    assert best == 64
    assert calls == [1, 2, 4, 8, 16, 32, 64, 128]  # never tries beyond the first failure
    assert trials[-1]["batch"] == 128 and not trials[-1]["fits"]
    assert ("error" in trials[-1]) == (error is not None)


def test_search_with_a_memory_budget_model():
    def fits(batch: int) -> bool:  # 300 MB fixed + 70 MB per sample against a 2 GB budget
        return 300 + 70 * batch <= 2048

    assert largest_fitting_batch(fits, 1024)[0] == 16


def test_search_caps_at_max_batch_and_reports_zero_when_nothing_fits():
    fits, calls = _mock(limit=10**9, error=None)
    assert largest_fitting_batch(fits, max_batch=100)[0] == 64 and calls[-1] == 64
    fits, calls = _mock(limit=0, error=RuntimeError)
    assert largest_fitting_batch(fits, max_batch=100)[0] == 0 and calls == [1]


def test_input_shapes_follow_the_factor_per_side():
    assert input_shape(2, 256, 1, 4) == (1, 256, 256)
    assert input_shape(2, 256, 8, 4) == (4, 32, 32)
    assert input_shape(3, 64, 4, 1) == (1, 16, 16, 16)


def test_subprocess_peak_memory_grows_with_batch():
    small = step_peak_mb("resnet10", (1, 32, 32), 2, "train", "auto", "cpu")
    large = step_peak_mb("resnet10", (1, 32, 32), 64, "train", "auto", "cpu")
    assert 0 < small < large


def test_efficiency_command_tiny(tmp_path):
    out = tmp_path / "eff.json"
    parser = argparse.ArgumentParser()
    cli_bench.add_efficiency_arguments(parser)
    args = parser.parse_args([
        "--arch", "resnet10", "--size2d", "32", "--factors", "1", "4", "--batch", "2",
        "--repeats", "1", "--max-batch", "2", "--budget-mb", "4096", "-o", str(out),
        "--markdown", str(tmp_path / "eff.md"),
    ])
    assert cli_bench.run_efficiency(args) == 0
    results = json.loads(out.read_text())
    cases = results["cases"]
    assert [c["factor"] for c in cases] == [1, 4]
    assert cases[0]["input_shape"] == [1, 32, 32] and cases[1]["input_shape"] == [1, 8, 8]
    assert cases[0]["storage_bytes"] == 32 * 32 * 4 and cases[1]["storage_bytes"] == 8 * 8 * 4
    assert all(c["max_batch"] == 2 and c["latency_s"] > 0 and c["throughput"] > 0 for c in cases)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2D | 4 | 16x |" in (tmp_path / "eff.md").read_text()
