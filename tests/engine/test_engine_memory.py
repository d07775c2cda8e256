"""3D windows sized to the memory: the memory model against a real peak-RSS measurement, the
choice monotone in the budget and within it, explicit --roi first, --max-memory errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model

from medvae_engine import cli
from medvae_engine.codec import memory
from medvae_engine.codec.latents import load_latent
from medvae_engine.codec.pipeline import CodecOptions, encode, encode_steps
from medvae_engine.imaging.io import write_volume
from medvae_engine.imaging.volume import Volume

GB = 2**30

# Runs in a fresh interpreter so that its peak RSS (VmHWM) belongs to this work alone.
PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    sys.path[:0] = {paths!r}
    from conftest import tiny_model
    from medvae_engine.codec import memory
    from medvae_engine.codec.pipeline import CodecOptions, reconstruct
    from medvae_engine.imaging.volume import Volume
    torch.set_num_threads(2)
    model = tiny_model(3)
    peak = memory.peak_rss  # VmHWM: the fork from pytest does not count
    reconstruct(Volume(np.zeros((16,) * 3, np.float32), np.eye(4), "mri"), model)  # warm-up
    out = dict(start=memory.process_rss(), peaks=[], rois=[])
    for side in {sides}:
        rng = np.random.default_rng(0)
        vol = Volume(rng.normal(size=(side,) * 3).astype(np.float32), np.eye(4), "mri")
        out["budget"] = memory.process_rss() + {extra}
        opts = CodecOptions(max_memory=out["budget"] if {extra} else None, roi={roi})
        out["rois"] += [memory.choose_roi(model, opts, (side,) * 3, s) for s in ("encode", "decode")]
        reconstruct(vol, model, opts)
        out["peaks"].append(peak())
    print(json.dumps(out))
""")


def run_peak(sides: list[int], roi: int | str | None = None, extra: int = 0) -> dict:
    """Peak RSS after reconstructing side^3 volumes with a tiny 3D model in its own interpreter."""
    paths = [str(Path(__file__).parent), str(Path(__file__).parents[2])]  # this folder's conftest
    script = PEAK_SCRIPT.format(paths=paths, sides=sides, roi=roi, extra=extra)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_measured_window_peak_grows_as_the_memory_model_says():
    """Whole 24^3 then 64^3 volumes (one window each) of the tiny model in a fresh interpreter: the
    growth of the real peak RSS (VmHWM) per added voxel is within [0.3, SAFETY] of the model's
    slope (decode, the larger, plus the codec's volume buffers); the model is an upper bound sized
    for the official architecture, a ch-32 model with one block per level measured 0.4-0.7 of it."""
    model = tiny_model(3)
    run = run_peak([24, 64], roi="side")
    measured = (run["peaks"][1] - run["peaks"][0]) / (64**3 - 24**3)
    slope = memory.PER_VOXEL["decode", "fp32"] * model.config["ch"]
    predicted = slope + memory.volume_buffer_bytes(1, "decode")
    assert 0.3 * predicted <= measured <= memory.SAFETY * predicted, (measured, predicted)


def test_chosen_windows_keep_the_real_peak_within_the_budget():
    """--max-memory 240 MiB above the loaded model: windows smaller than the 56^3 volume, larger
    than the minimum, and the process's real peak stays under the budget."""
    run = run_peak([56], extra=240 * 2**20)
    enc, dec = run["rois"]
    assert memory.MIN_ROI < dec <= enc < 56
    assert run["peaks"][0] <= run["budget"], (run["peaks"][0] - run["budget"]) / 2**20


def test_choice_is_monotone_in_the_budget():
    model = tiny_model(3)
    base = memory.process_rss()
    budgets = [base + k * 2**20 for k in (1, 50, 150, 300, 600, 1200, 2400, 8000)]
    for stage in ("encode", "decode"):
        rois = [memory.choose_roi(model, CodecOptions(max_memory=b), (200,) * 3, stage)
                for b in budgets]
        assert rois == sorted(rois), rois
        assert rois[0] == memory.MIN_ROI and rois[-1] == memory.MAX_ROI
        assert len(set(rois)) > 3  # the budget really steers the choice
        assert all(r % model.factor == 0 for r in rois)


def test_explicit_roi_overrides_the_budget(tmp_path, tiny_3d_path, ct_volume):
    vol = Volume(np.repeat(ct_volume.array, 6, axis=2)[:40, :36], ct_volume.affine, "ct")
    src, out = tmp_path / "ct.nii.gz", tmp_path / "ct_latent.nii.gz"
    write_volume(vol, src)
    code = cli.main(["encode", str(src), "-m", str(tiny_3d_path), "-o", str(out), "--roi", "24",
                     "--max-memory", "1M"])
    assert code == 0
    model = tiny_model(3)
    windows = encode(vol, model, CodecOptions(roi=24))
    whole = encode(vol, model, CodecOptions(roi=64))
    np.testing.assert_array_equal(load_latent(out).array, windows.array)
    assert not np.array_equal(windows.array, whole.array)  # 24^3 windows really differ from whole
    assert memory.choose_roi(model, CodecOptions(roi=24, max_memory=1), (400,) * 3, "decode") == 24


@pytest.mark.parametrize("bad", ["8X", "abc", "0", "-1G", "G", "0.5"])
def test_bad_max_memory_is_one_error_line(bad, tmp_path, tiny_3d_path, ct_volume, capsys):
    src = tmp_path / "ct.nii.gz"
    write_volume(ct_volume, src)
    out = tmp_path / "r.nii.gz"
    code = cli.main(["reconstruct", str(src), "-m", str(tiny_3d_path), "-o", str(out),
                     f"--max-memory={bad}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("error: --max-memory") and repr(bad) in err[0]


@pytest.mark.parametrize(("text", "value"), [("8G", 8 * GB), ("512M", 512 * 2**20),
                                             ("1.5GiB", int(1.5 * GB)), ("2048", 2048),
                                             ("4gb", 4 * GB)])
def test_memory_sizes_parse(text, value):
    assert memory.parse_bytes(text) == value


def test_volume_smaller_than_the_window_runs_whole(ct_volume):
    """A budget too small for any window gives MIN_ROI; a volume below it still runs in one call."""
    model = tiny_model(3)
    opts = CodecOptions(max_memory=1)
    assert memory.choose_roi(model, opts, (400,) * 3, "encode") == memory.MIN_ROI
    small = Volume(ct_volume.array[:28, :24], ct_volume.affine, "ct")  # 28 x 24 x 7
    steps = list(_progress(encode_steps(small, model, opts)))
    assert [(p.done, p.total) for p in steps] == [(1, 1)]


def _progress(steps):
    try:
        while True:
            yield next(steps)
    except StopIteration:
        return


def test_bench_memory_runs_windows_within_the_budget(tmp_path):
    """`medvae bench memory` on a ch-32 model: the 64^3 volume runs in windows chosen for 700M
    (the decode in several, to the end) and the whole 24^3 case runs. Whether the real peak
    keeps to a budget is tested in a fresh interpreter above: cases started from inside pytest
    measure 690-745 MB here against 690 MB from the shell."""
    out, md = tmp_path / "memory.json", tmp_path / "memory.md"
    code = cli.main(["bench", "memory", "--width", "32", "--precisions", "fp32", "--fit-sides",
                     "--whole", "24", "--windowed", "64", "--max-memory", "700M", "--max-windows",
                     "0", "--threads", "1", "-o", str(out), "--markdown", str(md)])
    assert code == 0
    cases = {c["kind"]: c for c in json.loads(out.read_text())["cases"]}
    windowed, whole = cases["windowed"], cases["whole"]
    assert windowed["roi_decode"] < 64 and windowed["decode_windows"][1] > 1
    assert windowed["decode_windows"][0] == windowed["decode_windows"][1]  # ran to the end
    assert 0 < whole["peak_encode_mb"] <= whole["peak_total_mb"]
    assert "| 64^3 | fp32 | windowed |" in md.read_text()
