"""Reconstruct the held-out right half of RG1_UNCR at native size, whole and in tiles, against bicubic.

PSNR (data range: the image's own) and the mean absolute offset over flat regions, as `medvae bench
quality` scores them; the check of issue 16 item 6 (flat brightness offsets on large radiographs).
Usage: python scripts/eval_radiograph_half.py MODEL [MODEL ...] [--tile 256 ...] [--max-side N]
"""

from __future__ import annotations

import argparse
import json
import time

from medvae_engine.benchmarks.quality import (
    centred_crop,
    flat_offset,
    read_reference,
    scored_range,
    scores,
)
from medvae_engine.codec.baselines import get_baseline
from medvae_engine.codec.pipeline import CodecOptions, reconstruct
from medvae_engine.models import load_model

HALF = "builtin:pydicom/RG1_UNCR.dcm[:, 0.5:1]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("models", nargs="+", help="zoo names or weight files")
    p.add_argument("--tile", type=int, nargs="*", default=[0], help="tile sides (0: whole image)")
    p.add_argument("--max-side", type=int, default=0, help="centred crop side (0: the whole half)")
    args = p.parse_args()
    volume = centred_crop(read_reference(HALF), args.max_side)
    rng = scored_range(volume)
    methods = [("bicubic", get_baseline("bicubic", 2, 4), 0)]
    methods += [(m, load_model(m), t) for m in args.models for t in args.tile]
    for name, model, tile in methods:
        t0 = time.perf_counter()
        recon = reconstruct(volume, model, CodecOptions(tile=tile or None))
        row = {"method": name, "tile": tile or "whole", "shape": list(volume.shape),
               "psnr_db": round(scores(volume.array, recon.array, rng)["psnr_db"], 2),
               "flat_offset_pct": round(flat_offset(volume.array, recon.array, rng), 3),
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
