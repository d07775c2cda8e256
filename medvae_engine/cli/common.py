"""What every `medvae` command shares: argument groups, reading inputs, writing results and
driving long work with the one progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..imaging.atomic import atomic_write_text
from ..imaging.dicom_write import dicom_source_note
from ..imaging.io import read_volume, write_output
from ..imaging.raster import picture_dtype
from ..runtime.cli_progress import drive


def add_output_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-o", "--output", required=True, help=what)


def add_format_arg(p: argparse.ArgumentParser) -> None:
    """--format for commands that write images: from the suffix, or a DICOM series folder."""
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "dicom"],
        help="output format: auto (from the -o suffix) or dicom (a new derived DICOM series in "
        "the new folder -o, in the source's study and geometry; patient fields with --keep-phi)",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="zoo name, checkpoint file, diffusers VAE folder or a baseline "
        "(nearest, bilinear, bicubic, trilinear, spline); default: a starter model",
    )
    p.add_argument("--weights", help="weights file for a named model")
    p.add_argument(
        "--factor", type=int, default=4, help="downsizing per side for baselines (default 4)"
    )
    add_trust_arg(p)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="UNSAFE: unpickle Python objects in the checkpoint file, which runs code from it; "
        "only for files from a source you trust",
    )


def tile_side(value: str) -> int:
    """--tile: a positive side, or none (0: run whole)."""
    if value.lower() in ("none", "whole"):
        return 0
    try:
        side = int(value)
    except ValueError:
        side = -1
    if side < 1:
        raise argparse.ArgumentTypeError(f"expected a positive tile side or none, got {value!r}")
    return side


def add_codec_args(p: argparse.ArgumentParser, decode_only: bool = False) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=8, help="slices per batch for 2D models")
    p.add_argument(
        "--roi", type=int, default=None,
        help="3D sliding-window side (default: the largest window, up to 160, that fits "
        "--max-memory or the memory available now)",
    )
    p.add_argument(
        "--max-memory", metavar="SIZE",
        help="memory budget for 3D models, e.g. 8G or 512M: the process's peak, used to choose "
        "the window (default: 80%% of the memory available now, the GPU's free memory on CUDA)",
    )
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    p.add_argument(
        "--tile", type=tile_side, metavar="SIDE|none",
        help="2D tile side in pixels, or none to run 2D images whole at any size (global "
        "attention: quadratic time); default: images above 512^2 in 512-px tiles that share "
        "GroupNorm statistics, attention within 64 latent pixels",
    )
    if decode_only:
        return
    p.add_argument(
        "--axis", type=int, help="slice axis for 2D models on volumes (default: coarsest)"
    )
    p.add_argument(
        "--sample", action="store_true", help="sample z from the posterior (default: mean)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --sample")
    p.add_argument(
        "--refine", type=int, default=0, metavar="STEPS",
        help="refine each latent with STEPS gradient steps through the decoder (same latent "
        "size, higher PSNR, about 3 decoder passes a step; our autoencoders, whole 2D slices "
        "up to 512^2 or --tile none; 30 steps give most of the gain; default 0: the encoder's latent)",
    )
    p.add_argument(
        "--no-refiner", dest="refiner", action="store_false",
        help="leave out the model's learned latent refiner (starter_4_1_3d: 3 decoder passes "
        "forward and back at encoding, +0.35 dB; without it encoding is several times faster)",
    )
    p.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="intensity window mapped to [-1, 1] (default: CT [-1000, 1000], else min-max)",
    )


def add_png_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--png-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="PNG output: map LO..HI to 0..255 (default: a PNG/JPEG input's own bit depth, "
        "else the --window; other float results need it)",
    )


def add_read_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", default="auto", choices=["auto", "ct", "mri", "xray"])
    p.add_argument("--frame", type=int, help="frame of a 4D image")
    p.add_argument("--series-uid", help="DICOM series to read from a folder holding several")
    p.add_argument(
        "--keep-phi",
        action="store_true",
        help="keep patient-identifying DICOM fields in output metadata (default: dropped)",
    )


def read_input(path: str, args: argparse.Namespace):
    return read_volume(
        path,
        frame=args.frame,
        series_uid=args.series_uid,
        modality=args.modality,
        keep_phi=args.keep_phi,
    )


def write_image(volume, path, args: argparse.Namespace, description: str) -> Path:
    """Write a result image in the format --format asks for; say so when DICOM export has no
    DICOM source."""

    fmt = getattr(args, "format", "auto")
    written = write_output(volume, path, fmt=fmt, description=description,
                           keep_phi=getattr(args, "keep_phi", False),
                           png_range=png_range(args, volume))
    note = dicom_source_note(volume) if fmt == "dicom" else None
    if note:
        print(f"note: {path}: {note}", file=sys.stderr)
    return written


def png_range(args: argparse.Namespace, volume) -> tuple[float, float] | None:
    """--png-range, else --window for results that did not come from a PNG/JPEG (see README)."""

    if getattr(args, "png_range", None):
        return tuple(args.png_range)
    window = getattr(args, "window", None)
    return tuple(window) if window and picture_dtype(volume.metadata) is None else None


def run_steps(stage: str, steps, unit: str = "step"):
    """Drive a codec generator with the progress bar (ETA included) when stderr is a terminal."""

    return drive(steps, stage, unit=unit, terminal_only=True)


def write_results(output: str, results: dict, markdown: str | None, table: str) -> None:
    """The results JSON, and the Markdown table when asked for."""
    atomic_write_text(output, json.dumps(results, indent=2) + "\n")
    if markdown:
        atomic_write_text(markdown, table)
