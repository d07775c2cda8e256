"""``medvae bench speed|quality|sr|efficiency|encode|memory``: the benchmarks' command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..benchmarks.efficiency import (
    MODES,
    STORAGE_DTYPES,
    EfficiencySettings,
    efficiency_figure,
    efficiency_markdown,
)
from ..benchmarks.efficiency import run_efficiency as efficiency_steps
from ..benchmarks.encode import add_encode_bench_arguments
from ..benchmarks.memory import add_memory_arguments, run_memory
from ..benchmarks.quality import add_quality_arguments, run_quality
from ..benchmarks.speed import add_speed_arguments, run_bench
from ..benchmarks.sr import add_sr_report_arguments, run_sr_report
from ..benchmarks.tiling import add_tiling_bench_arguments
from ..cad.models import STEMS
from ..errors import InputError
from ..imaging.atomic import atomic_write
from ..runtime.cli_progress import drive
from .common import write_results


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """`medvae bench speed|quality|sr|efficiency|encode|tiling`."""
    kinds = parser.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    p = kinds.add_parser("speed", help="encode/decode throughput, GFLOP/s and peak memory")
    add_speed_arguments(p)
    p.set_defaults(func=run_bench)
    p = kinds.add_parser("quality", help="models vs interpolation on held-out real images")
    add_quality_arguments(p)
    p.set_defaults(func=run_quality)
    p = kinds.add_parser("sr", help="an SR model vs bicubic and the AE ceiling on held-out images, "
                         "fast vs full sampler, hallucination rates (the SR model card)")
    add_sr_report_arguments(p)
    p.set_defaults(func=run_sr_report)
    p = kinds.add_parser("efficiency", help="CAD models on images vs latents: latency, batch, storage")
    add_efficiency_arguments(p)
    p.set_defaults(func=run_efficiency)
    p = kinds.add_parser("encode", help="dataset encoding of real 2D slices: one at a time vs "
                         "--batch-size with prefetch (images/s)")
    add_encode_bench_arguments(p)
    p = kinds.add_parser("tiling", help="large 2D images: synchronised tiles vs whole-image "
                         "inference (PSNR on real images; 2048^2 vs 256^2 time, peak memory)")
    add_tiling_bench_arguments(p)
    p = kinds.add_parser("memory", help="3D codec peak memory against window and volume size, "
                         "whole and in windows sized to --max-memory (fits the memory model)")
    add_memory_arguments(p)
    p.set_defaults(func=run_memory)


def add_efficiency_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``medvae bench efficiency``."""
    d = EfficiencySettings()
    p.add_argument("--arch", default=d.arch, help="classifier (resnet/seresnet/densenet + size)")
    p.add_argument("--dims", type=int, nargs="+", choices=[2, 3], default=list(d.dims))
    p.add_argument("--size2d", type=int, default=d.size2d, help="2D image side")
    p.add_argument("--size3d", type=int, default=d.size3d, help="3D volume side")
    p.add_argument("--factors", type=int, nargs="+", default=list(d.factors),
                   help="downsizing per side; 1 is the image (2D area f^2, 3D volume f^3)")
    p.add_argument("--latent-channels", type=int, default=d.latent_channels)
    p.add_argument("--batch", type=int, default=d.batch, help="batch size for latency")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--budget-mb", type=float, default=d.budget_mb,
                   help="memory budget for the largest-batch search")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="stop the search here")
    p.add_argument("--mode", choices=MODES, default=d.mode, help="training step or inference")
    p.add_argument("--stem", choices=STEMS, default=d.stem)
    p.add_argument("--storage-dtype", choices=list(STORAGE_DTYPES), default=d.storage_dtype)
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, help="torch CPU threads for the latency runs")
    p.add_argument("-o", "--output", default="cad_efficiency.json", help="results JSON")
    p.add_argument("--plot", help="figure PNG (default: next to the JSON)")
    p.add_argument("--markdown", help="also write the table as Markdown")


def run_efficiency(args: argparse.Namespace) -> int:
    """Run the efficiency benchmark; writes JSON, PNG and optionally Markdown."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(f < 1 for f in args.factors) or args.batch < 1 or args.max_batch < 1:
        raise InputError("factors, --batch and --max-batch must be positive")
    for dims, size in ((2, args.size2d), (3, args.size3d)):
        bad = [f for f in args.factors if dims in args.dims and size % f]
        if bad:
            raise InputError(f"{dims}D side {size} is not divisible by factor(s) {bad}")
    settings = EfficiencySettings(
        args.arch, tuple(args.dims), args.size2d, args.size3d, tuple(args.factors),
        args.latent_channels, args.batch, args.repeats, args.budget_mb, args.max_batch,
        args.mode, args.stem, args.storage_dtype, args.device,
    )
    results = drive(efficiency_steps(settings), "bench efficiency", unit="step")
    table = efficiency_markdown(results)
    plot = Path(args.plot) if args.plot else Path(args.output).with_suffix(".png")
    write_results(args.output, results, args.markdown, table)
    atomic_write(plot, lambda tmp: efficiency_figure(results, tmp))
    print(table, end="")
    return 0
