"""``medvae bench memory``: peak memory of the 3D codec against window and volume size.

Two parts, every case in a fresh subprocess (peak RSS belongs to that case alone), run one after
another:

- fit: single windows (a volume the size of one window, run whole) of a few small sides; the
  increase of peak RSS over the loaded model against window voxels gives the memory model's
  bytes per voxel per unit of base width (``codec/memory.py``), for encode and encode + decode,
  fp32 and bf16, and checks the model's prediction on them.
- volumes: a real volume (the bundled MNI152 brain MRI, resampled) of growing side through the
  codec, whole (where it fits under ``--whole-limit``) and in windows chosen by the memory model
  for ``--max-memory``; windowed cases may stop after ``--max-windows`` windows per stage (the
  peak is reached in the first window: buffers are allocated there), ``--full`` sides run to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import psutil
import torch

from ..codec.latents import Latent
from ..codec.memory import (
    choose_roi,
    parse_bytes,
    peak_rss,
    predict_window_peak,
    process_rss,
    volume_buffer_bytes,
)
from ..codec.pipeline import CodecOptions, decode_steps, encode_steps
from ..errors import InputError
from ..imaging.atomic import atomic_write_text
from ..imaging.io import read_volume
from ..imaging.normalization import fit_normalization
from ..imaging.volume import Volume
from ..models import AutoencoderKL
from ..models.zoo import get_spec
from ..runtime.cli_progress import drive, write
from ..runtime.progress import Progress

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "mri_brain_mni152.nii.gz"
GB = 2**30  # sizes are in powers of 1024, as --max-memory reads them


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``medvae bench memory``."""
    p.add_argument("--arch", default="medvae_4_1_3d", help="zoo architecture (random weights)")
    p.add_argument("--width", type=int, help="base width instead of the architecture's own")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--fit-sides", type=int, nargs="*", default=[24, 32, 40, 48],
                   help="single-window sides for the memory model's fit")
    p.add_argument("--whole", type=int, nargs="*", default=[64, 96, 128],
                   help="volume sides run whole (skipped when predicted above --whole-limit)")
    p.add_argument("--windowed", type=int, nargs="*", default=[128, 192, 256],
                   help="volume sides run in the windows chosen for --max-memory")
    p.add_argument("--max-memory", default="8G", help="budget for the windowed cases (e.g. 8G)")
    p.add_argument("--whole-limit", default="16G", help="skip whole-volume cases predicted above")
    p.add_argument("--max-windows", type=int, default=1,
                   help="stop windowed cases after this many windows per stage (0: all)")
    p.add_argument("--stages", nargs="+", default=["encode", "decode"], choices=["encode", "decode"],
                   help="stages of the windowed cases (decode alone starts from a zero latent)")
    p.add_argument("--full", type=int, nargs="*", default=[],
                   help="windowed sides run to the end (encode only, first precision)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("-o", "--output", default="docs/bench/memory.json", help="JSON results")
    p.add_argument("--markdown", default="docs/bench/memory.md", help="Markdown table to (re)write")


def run_memory(args: argparse.Namespace) -> int:
    """Run the memory benchmark; writes JSON and Markdown as each case finishes."""
    max_memory = parse_bytes(args.max_memory, "--max-memory")
    whole_limit = parse_bytes(args.whole_limit, "--whole-limit")
    if args.max_windows < 0:
        raise InputError("--max-windows must be 0 or positive")
    results = {"machine": _machine(args.threads), "arch": args.arch, "width": args.width,
               "max_memory": max_memory, "cases": []}

    def finished(p: Progress) -> None:
        results["cases"].append(p.payload)
        write(json.dumps(p.payload))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.output), json.dumps(results, indent=2) + "\n")
        if args.markdown:
            atomic_write_text(Path(args.markdown), memory_markdown(results))

    cases = memory_cases(args, max_memory, whole_limit)
    drive(memory_steps(cases), "bench memory", unit="case", report=finished)
    return 0


def memory_cases(args: argparse.Namespace, max_memory: int, whole_limit: int) -> list[dict]:
    """Every case of the run, in order: fit windows, whole volumes, windowed volumes."""

    config = get_spec(args.arch).config() | ({"ch": args.width} if args.width else {})
    base = {"config": config, "threads": args.threads}
    cases = []
    for precision in args.precisions:
        for side in args.fit_sides:
            cases.append(dict(base, kind="fit", side=side, precision=precision, roi=side))
    for precision in args.precisions:
        for side in args.windowed:
            cases.append(dict(base, kind="windowed", side=side, precision=precision, roi=None,
                              max_memory=max_memory, max_windows=args.max_windows,
                              stages=args.stages))
    for precision in args.precisions:
        for side in args.whole:
            predicted = _process_bytes(config, side, precision)
            case = dict(base, kind="whole", side=side, precision=precision, roi=side,
                        predicted_peak=predicted)
            if predicted > whole_limit:
                case["skipped"] = f"predicted {predicted / GB:.1f} GiB > {whole_limit / GB:.1f} GiB"
            cases.append(case)
    for side in args.full:
        cases.append(dict(base, kind="full", side=side, precision=args.precisions[0], roi=None,
                          max_memory=max_memory, max_windows=0, encode_only=True))
    return cases


def _process_bytes(config: dict, side: int, precision: str) -> float:
    """Predicted peak RSS of a whole-volume encode + decode: model, buffers and one window."""
    params = _param_count(config)
    return (params * 4 + 0.4 * GB + volume_buffer_bytes(side**3, "decode")
            + predict_window_peak(config, params, side, precision, "decode"))


def _param_count(config: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in AutoencoderKL(**config).parameters())


def memory_steps(cases: list[dict]) -> Generator[Progress, None, None]:
    """Run the cases one at a time in subprocesses, yielding each result as payload."""
    for done, case in enumerate(cases, start=1):
        label = f"{case['kind']} {case['side']} {case['precision']}"
        if case.get("skipped"):
            result = {"skipped": case["skipped"]}
        else:
            result = _subprocess(case)
        payload = {k: v for k, v in case.items() if k not in ("config", "threads")}
        yield Progress(done, len(cases), "memory", info={"case": label}, payload=payload | result)


def _subprocess(case: dict) -> dict:
    cmd = [sys.executable, "-m", "medvae_engine.benchmarks.memory", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:160]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def real_volume(side: int) -> np.ndarray:
    """The bundled MNI152 brain MRI (112x136x112) resampled trilinearly to side^3."""

    t = torch.from_numpy(read_volume(str(SAMPLE)).array.astype(np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=(side,) * 3, mode="trilinear")
    return out[0, 0].numpy()


def worker(case: dict) -> dict:
    """One case through the codec (runs in the subprocess): peaks after encode and decode."""

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    model = AutoencoderKL(**case["config"]).eval()
    model.name = "bench"
    volume = Volume(real_volume(case["side"]), np.eye(4), "mri")
    opts = CodecOptions(roi=case["roi"], precision=case["precision"],
                        max_memory=case.get("max_memory"))
    start = process_rss()
    out = {"rss_start_mb": start / 2**20, "peak_before_mb": _peak_mb()}
    shape = (case["side"],) * 3
    out["roi_encode"] = choose_roi(model, opts, shape, "encode")
    out["roi_decode"] = choose_roi(model, opts, shape, "decode")
    stages = case.get("stages", ["encode", "decode"])
    latent = None
    if "encode" in stages:
        t0 = time.perf_counter()
        latent, windows = _drive(encode_steps(volume, model, opts), case.get("max_windows", 0))
        out.update(encode_s=time.perf_counter() - t0, encode_windows=windows,
                   peak_encode_mb=_peak_mb())
    if "decode" not in stages or case.get("encode_only"):
        return out
    if latent is None:  # encode stopped early (or skipped): decode a zero latent of the same shape
        latent = zero_latent(volume, model)
    t0 = time.perf_counter()
    _, windows = _drive(decode_steps(latent, model, opts), case.get("max_windows", 0))
    out.update(decode_s=time.perf_counter() - t0, decode_windows=windows, peak_total_mb=_peak_mb())
    if case["kind"] == "fit":  # one window: its peaks over the loaded model, and the prediction
        params = sum(p.numel() for p in model.parameters())
        out.update(
            params=params,
            encode_mb=out["peak_encode_mb"] - start / 2**20,
            decode_mb=out["peak_total_mb"] - start / 2**20,
            **{f"predicted_{stage}_mb": predict_window_peak(
                case["config"], params, case["side"], case["precision"], stage) / 2**20
               for stage in ("encode", "decode")})
    return out


def zero_latent(volume, model):
    """A zero Latent of ``volume``'s shape for ``model``: decoding it costs what any latent costs."""

    f = int(model.factor)
    grid = tuple(-(-s // f) for s in volume.shape)
    return Latent(array=np.zeros((model.latent_channels, *grid), np.float32),
                  image_shape=volume.shape, image_affine=volume.affine.copy(),
                  padded_shape=tuple(g * f for g in grid), factors=(f, f, f),
                  normalization=fit_normalization(volume.array, "mri"), model="bench",
                  spatial_dims=3, axis=None, weights_sha256=None, weights_path=None,
                  modality="mri", metadata={}, orientation=None, image_orientation=None)


def _drive(steps, max_windows: int) -> tuple[object, list[int]]:
    """Run codec steps to the end, or stop after ``max_windows`` (result None); [done, total]."""
    done = total = 0
    try:
        while True:
            p = next(steps)
            done, total = p.done, p.total
            if max_windows and done >= max_windows and done < total:
                steps.close()
                return None, [done, total]
    except StopIteration as stop:
        return stop.value, [done, total]


def _peak_mb() -> float:
    return peak_rss() / 2**20


def _machine(threads: int) -> dict:
    vm = psutil.virtual_memory()
    return {"threads": threads, "torch": torch.__version__, "ram_gb": vm.total / GB,
            "available_gb_at_start": vm.available / GB, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average": os.getloadavg()}


def memory_markdown(results: dict) -> str:
    """The results as Markdown tables: fit, then peak memory against volume size."""
    lines = [f"# Memory ({results['arch']}, {results['machine']['date']})", "",
             "## Single windows (fit of the memory model)", "",
             "| window | precision | encode peak over model MiB | with decode MiB | predicted encode / "
             "decode MiB |", "|---|---|---|---|---|"]
    for c in results["cases"]:
        if c["kind"] != "fit" or "error" in c:
            continue
        lines.append(f"| {c['side']}^3 | {c['precision']} | {c['encode_mb']:.0f} | "
                     f"{c['decode_mb']:.0f} | {c['predicted_encode_mb']:.0f} / "
                     f"{c['predicted_decode_mb']:.0f} |")
    lines += ["", f"## Volumes (windowed: --max-memory {results['max_memory'] / GB:.1f} GiB)", "",
              "| volume | precision | run | window (enc / dec) | windows run (enc, dec) | peak RSS "
              "encode GiB | peak RSS with decode GiB | encode s | decode s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in results["cases"]:
        if c["kind"] == "fit":
            continue
        name = f"{c['side']}^3 | {c['precision']} | {c['kind']}"
        if "skipped" in c or "error" in c:
            lines.append(f"| {name} | {c.get('skipped') or c.get('error')} |||||")
            continue
        roi = f"{c.get('roi_encode')} / {c.get('roi_decode')}" if c["kind"] != "whole" else "whole"
        runs = ", ".join(f"{d}/{t}" if t else "-" for d, t in
                         (c.get("encode_windows", [0, 0]), c.get("decode_windows", [0, 0])))
        cells = [f"{c[k] / 1024:.2f}" if k in c else "-" for k in ("peak_encode_mb", "peak_total_mb")]
        cells += [f"{c[k]:.0f}" if k in c else "-" for k in ("encode_s", "decode_s")]
        lines.append(f"| {name} | {roi} | {runs} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
