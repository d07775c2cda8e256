"""``medvae bench tiling``: large 2D images in synchronised tiles against whole-image inference.

Quality: real images (pydicom-data's 512^2 CT, central crops of its 1024^2 MR and of the 1841x1955
chest radiograph) reconstructed whole, in synchronised tiles (``tiled``: GroupNorm over the whole
image, local attention) and in the independent tiles of before (each tile its own statistics); PSNR
against the original and against whole-image inference. Cost: in one fresh process, a 256^2 crop
and the radiograph reflected to 2048^2 with the default options (wall and CPU time, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

from ..codec.estimate import plan_flops
from ..codec.pipeline import SYNC_TILE, CodecOptions, reconstruct
from ..imaging.atomic import atomic_write_text
from ..imaging.volume import Volume
from ..models import load_model
from .quality import scored_range, scores
from .speed import machine_info

IMAGES = {  # pydicom-data file, modality
    "ct": ("693_UNCR.dcm", "ct"),
    "mr": ("MR2_UNCR.dcm", "mri"),
    "xray": ("RG1_UNCR.dcm", "xray"),
}


def add_tiling_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--models", nargs="+", default=["starter_4_1_2d", "starter_4_3_2d"],
                   help="2D models (the first also runs the cost case)")
    p.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES),
                   help="pydicom-data CT, MR and chest radiograph (default: all)")
    p.add_argument("--crop", type=int, default=512, help="central crop side for quality (512)")
    p.add_argument("--tile", type=int, default=256, help="tile side of the tiled runs (256)")
    p.add_argument("--large", type=int, default=2048, help="large side of the cost run (2048)")
    p.add_argument("-o", "--output", default="docs/bench/tiling.json", help="JSON results")
    p.add_argument("--markdown", default="docs/bench/tiling.md", help="Markdown tables")
    p.set_defaults(func=run_tiling_bench)


def run_tiling_bench(args: argparse.Namespace) -> int:
    results = {"machine": machine_info(torch.get_num_threads()) | {"load_average": os.getloadavg()},
               "crop": args.crop, "tile": args.tile, "quality": [], "cost": None}
    results["cost"] = cost_case(args.models[0], args.large)
    print(json.dumps(results["cost"]), flush=True)
    _write(results, args)
    for model_name in args.models:
        for image in args.images:
            row = quality_case(model_name, image, args.crop, args.tile)
            results["quality"].append(row)
            print(json.dumps(row), flush=True)
            _write(results, args)
    print(markdown(results))
    return 0


def real_image(key: str, side: int | None = None) -> Volume:
    """A pydicom-data image in its own units (CT in HU), centrally cropped to ``side``."""
    from pydicom.data import get_testdata_file  # optional test-data package

    name, modality = IMAGES[key]
    ds = pydicom.dcmread(get_testdata_file(name))
    a = ds.pixel_array.astype(np.float32)
    if modality == "ct":
        a = a * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    if side is not None:
        y, x = (max(0, (s - side) // 2) for s in a.shape)
        a = a[y : y + side, x : x + side]
    return Volume(np.ascontiguousarray(a), np.eye(4), modality)


def quality_case(model_name: str, image: str, crop: int, tile: int) -> dict:
    """Whole, synchronised tiles and independent tiles on one real crop: PSNR and seconds."""

    model = load_model(model_name)
    volume = real_image(image, crop)
    rng = scored_range(volume)
    ways = {
        "whole": (model, CodecOptions(whole=True)),
        "tiled": (model, CodecOptions(tile=tile)),
        "independent tiles": (Independent(model), CodecOptions(tile=tile)),
    }
    row = {"model": model_name, "image": image, "shape": list(volume.shape), "ways": {}}
    outputs = {}
    for way, (m, options) in ways.items():
        start = time.perf_counter()
        outputs[way] = reconstruct(volume, m, options).array
        seconds = time.perf_counter() - start
        row["ways"][way] = {"seconds": round(seconds, 2),
                            "psnr_db": round(scores(volume.array, outputs[way], rng)["psnr_db"], 2)}
    for way in ("tiled", "independent tiles"):
        row["ways"][way]["psnr_vs_whole_db"] = round(
            scores(outputs["whole"], outputs[way], rng)["psnr_db"], 2)
    return row


class Independent(torch.nn.Module):
    """A model hidden from ``tiled``: the codec then runs independent blended tiles (the path
    before synchronised tiles), each tile with its own GroupNorm statistics."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        for key in ("spatial_dims", "factor", "in_channels", "latent_channels"):
            setattr(self, key, getattr(model, key))
        self.name = getattr(model, "name", type(model).__name__)

    def encode(self, x, sample=False, generator=None):
        return self.model.encode(x, sample=sample, generator=generator)

    def decode(self, z):
        return self.model.decode(z)


def cost_case(model_name: str, large: int) -> dict:
    """Run ``cost_worker`` in a fresh interpreter so its peak RSS is this case's alone."""
    proc = subprocess.run([sys.executable, "-m", "medvae_engine.benchmarks.tiling", model_name, str(large)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cost_worker(model_name: str, large: int) -> dict:
    """256^2 against ``large``^2 (the radiograph reflected) with default options, in one process."""

    model = load_model(model_name)
    big = real_image("xray")
    pad = [(0, max(0, large - s)) for s in big.shape]
    big = Volume(np.pad(big.array, pad, mode="reflect")[:large, :large].copy(), np.eye(4), "xray")
    o = min(800, large - 256)  # inside the lung field at 2048
    small = Volume(big.array[o : o + 256, o : o + 256].copy(), np.eye(4), "xray")
    reconstruct(small, model)  # untimed: oneDNN builds its kernels
    small_times = [_timed(small, model) for _ in range(3)]
    rss_small = _rss_mb()
    large_time = _timed(big, model)
    small_times += [_timed(small, model) for _ in range(2)]  # the load may change meanwhile
    wall, cpu = (min(t[i] for t in small_times) for i in (0, 1))
    pixels = (large / 256) ** 2
    return {
        "model": model_name, "small": 256, "large": large, "pixel_ratio": pixels,
        "small_wall_s": round(wall, 3), "small_cpu_s": round(cpu, 3),
        "large_wall_s": round(large_time[0], 2), "large_cpu_s": round(large_time[1], 2),
        "wall_ratio_per_pixel": round(large_time[0] / wall / pixels, 3),
        "cpu_ratio_per_pixel": round(large_time[1] / cpu / pixels, 3),
        "peak_rss_mb": round(_rss_mb()), "rss_after_small_mb": round(rss_small),
        "tflop_tiled": round(plan_flops(model, big, CodecOptions()) / 1e12, 2),
        "tflop_whole": round(plan_flops(model, big, CodecOptions(whole=True)) / 1e12, 2),
        "tflop_small": round(plan_flops(model, small, CodecOptions()) / 1e12, 4),
        "default_tile": SYNC_TILE,
    }


def _timed(volume: Volume, model) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    reconstruct(volume, model)
    return time.perf_counter() - wall, time.process_time() - cpu


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown(results: dict) -> str:
    lines = ["| model | image | whole dB | tiled dB | tiled vs whole dB | independent tiles dB | "
             "independent vs whole dB | whole s | tiled s |", "|" + "---|" * 9]
    for r in results["quality"]:
        w = r["ways"]
        lines.append(
            f"| {r['model']} | {r['image']} {'x'.join(map(str, r['shape']))} | {w['whole']['psnr_db']} | "
            f"{w['tiled']['psnr_db']} | {w['tiled']['psnr_vs_whole_db']} | "
            f"{w['independent tiles']['psnr_db']} | {w['independent tiles']['psnr_vs_whole_db']} | "
            f"{w['whole']['seconds']} | {w['tiled']['seconds']} |")
    c = results["cost"] or {}
    if "large" in c:
        lines += ["", "| model | 256^2 s (CPU s) | "
                  f"{c['large']}^2 s (CPU s) | time / (pixel ratio x 256^2 time), wall (CPU) | "
                  "peak RSS | TFLOP tiled / whole |", "|---|---|---|---|---|---|",
                  f"| {c['model']} | {c['small_wall_s']} ({c['small_cpu_s']}) | {c['large_wall_s']} "
                  f"({c['large_cpu_s']}) | {c['wall_ratio_per_pixel']} ({c['cpu_ratio_per_pixel']}) | "
                  f"{c['peak_rss_mb']} MB | {c['tflop_tiled']} / {c['tflop_whole']} |"]
    return "\n".join(lines)


def _write(results: dict, args: argparse.Namespace) -> None:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.output), json.dumps(results, indent=2))
    atomic_write_text(Path(args.markdown), markdown(results) + "\n")


if __name__ == "__main__":
    print(json.dumps(cost_worker(sys.argv[1], int(sys.argv[2]))))
