"""``medvae bench encode``: dataset encoding of real 2D slices, one at a time vs batched + prefetch.

The slices are 256^2 crops of the bundled chest radiograph (pydicom-data RG1_UNCR) at a grid of
offsets, written as NIfTI files; each way encodes the same folder with the same model in one run
(images/s and the ratio; the latents of both ways are compared too).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..codec.dataset import Encoder, encode_dataset, find_inputs, latent_path
from ..codec.latents import load_latent
from ..codec.pipeline import CodecOptions
from ..imaging.atomic import atomic_write_text
from ..imaging.io import read_volume
from ..models import load_model
from ..runtime.cli_progress import drive
from ..runtime.progress import run
from .speed import machine_info

RADIOGRAPH = Path(__file__).parents[1] / "sample_data" / "xray_chest_rg1.nii.gz"
WAYS = (  # (label, batch size, prefetched inputs)
    ("one at a time", 1, 0),
    ("one at a time + prefetch", 1, 2),
    ("batched + prefetch", None, 2),
)


def add_encode_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=64, help="number of real 2D slices (default 64)")
    p.add_argument("--side", type=int, default=256, help="slice side (default 256)")
    p.add_argument("-m", "--model", default="starter_4_1_2d", help="2D model (default starter)")
    p.add_argument("--batch-size", type=int, default=8, help="batch of the batched way (default 8)")
    p.add_argument("-o", "--output", default="docs/bench/encode.json", help="JSON results")
    p.set_defaults(func=run_encode_bench)


def run_encode_bench(args: argparse.Namespace) -> int:
    """Encode one folder of real slices each way in turn; print and write images/s and ratios."""

    model = load_model(args.model)
    results = {"machine": machine_info(torch.get_num_threads()) | {"load_average": os.getloadavg()},
               "model": args.model, "count": args.count,
               "side": args.side, "source": RADIOGRAPH.name, "ways": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_slices(Path(tmp) / "slices", args.count, args.side)
        inputs = find_inputs([data])
        for batch in (1, args.batch_size):  # untimed: oneDNN builds kernels per batch shape
            warm = [(i, Path(tmp) / f"warm{batch}" / latent_path(i)) for i in inputs[: args.batch_size]]
            run(encode_dataset(warm, _read, Encoder(lambda ndim: model, CodecOptions(batch_size=batch))))
        latents = {}
        for label, batch, prefetch in WAYS:
            out = Path(tmp) / f"out{len(latents)}"
            encoder = Encoder(lambda ndim: model, CodecOptions(batch_size=batch or args.batch_size))
            start = time.perf_counter()
            summary = drive(encode_dataset([(i, out / latent_path(i)) for i in inputs], _read, encoder,
                                           prefetch=prefetch), f"bench encode, {label}",
                            unit="image")
            seconds = time.perf_counter() - start
            if summary.encoded != len(inputs):
                raise RuntimeError(f"{label}: {len(summary.failures)} slices failed")
            latents[label] = np.stack([load_latent(out / latent_path(i)).array for i in inputs])
            way = {"way": label, "batch_size": batch or args.batch_size, "prefetch": prefetch,
                   "seconds": round(seconds, 2), "images_per_s": round(len(inputs) / seconds, 3)}
            results["ways"].append(way)
            print(json.dumps(way))
    base = results["ways"][0]["images_per_s"]
    first = latents[WAYS[0][0]]
    for way in results["ways"]:
        way["ratio"] = round(way["images_per_s"] / base, 3)
        diff = float(np.abs(latents[way["way"]] - first).max())
        way["max_latent_diff_vs_one_at_a_time"] = diff
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.output), json.dumps(results, indent=2))
    for way in results["ways"]:
        print(f"{way['way']:26} batch {way['batch_size']}: {way['images_per_s']:.2f} images/s, "
              f"{way['ratio']:.2f}x, max latent difference {way['max_latent_diff_vs_one_at_a_time']:.1e}")
    return 0


def write_slices(folder: Path, count: int, side: int) -> Path:
    """``count`` real ``side``^2 crops of the radiograph at a grid of offsets, as 2D NIfTI files."""
    image = np.asarray(nib.load(RADIOGRAPH).dataobj, dtype=np.float32).squeeze()
    rows = int(np.ceil(np.sqrt(count)))
    ys = np.linspace(0, image.shape[0] - side, rows).astype(int)
    xs = np.linspace(0, image.shape[1] - side, rows).astype(int)
    folder.mkdir(parents=True)
    for k in range(count):
        y, x = ys[k // rows], xs[k % rows]
        crop = image[y : y + side, x : x + side]
        nib.save(nib.Nifti1Image(crop, np.diag([4.0, 4.0, 1.0, 1.0])), folder / f"crop{k:03d}.nii.gz")
    return folder


def _read(item):
    return read_volume(item.path)
