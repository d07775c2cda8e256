"""The ``medvae`` command: models, encode, decode, reconstruct, analyze, train, study, bench.

Bad input ends with one ``error: ...`` line on stderr and exit code 2; nothing partial is left at
the output path (every writer is atomic).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from ..analysis.report import add_analyze_arguments, run_analyze
from ..benchmarks.quality import scored_range, scores
from ..codec.dataset import (
    Encoder,
    encode_dataset,
    find_inputs,
    gather,
    is_dataset,
    latent_path,
    shard,
    write_failures,
)
from ..codec.estimate import LONG_RUN_SECONDS, estimate_reconstruction
from ..codec.latents import load_latent
from ..codec.memory import parse_bytes
from ..codec.pipeline import CodecOptions, decode_steps, encode_steps, model_name
from ..codec.spec import load_codec
from ..errors import InputError, MedVAEError, OutputError
from ..imaging.atomic import atomic_write_text
from ..imaging.io import check_output
from ..imaging.normalization import fit_normalization
from ..models import get_spec, list_models, list_sr_models, weights_sha256
from ..models.checkpoints import convert_checkpoint, inspect_checkpoint
from ..models.loading import download_steps
from ..models.zoo import DEFAULT_2D, DEFAULT_3D
from ..runtime.cli_progress import drive, write
from ..runtime.distributed import rank_device
from ..version import __version__
from .bench import add_bench_arguments
from .cad import add_cad_arguments, run_cad
from .common import (
    add_codec_args,
    add_format_arg,
    add_model_args,
    add_output_arg,
    add_png_arg,
    add_read_args,
    add_trust_arg,
    read_input,
    run_steps,
    write_image,
)
from .sr import add_sr_arguments, add_train_sr_arguments, run_sr, run_train_sr
from .study import add_study_arguments
from .train import add_train_arguments, run_train


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except MedVAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medvae",
        description="MedVAE medical-image autoencoders: encode, decode, reconstruct, analyse, train.",
    )
    parser.add_argument("--version", action="version", version=f"medvae {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("models", help="list the model zoo and which weights are available")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--download", metavar="NAME",
        help="fetch an official model's weights into the cache folder (needs the hub; shows progress)"
    )
    p.add_argument(
        "--inspect", metavar="FILE",
        help="a checkpoint's inferred architecture, model tensors and ignored tensors",
    )
    add_trust_arg(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("convert", help="checkpoint -> safetensors in this project's safe format")
    p.add_argument("checkpoint", help=".ckpt/.pt/.pth/.safetensors holding a MedVAE autoencoder")
    add_output_arg(p, "new .safetensors file (architecture and source in its header)")
    add_trust_arg(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("encode", help="image(s) -> latent NIfTI + JSON sidecar")
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files, DICOM series folders, dataset folders (walked recursively; latents "
        "mirror their paths, resume skips unchanged inputs, failures go to failures.csv) or a CSV; "
        "a 2D model takes 2D images of one size --batch-size at a time while the next files are read",
    )
    add_output_arg(p, "latent file (.nii.gz) or folder")
    add_model_args(p)
    add_codec_args(p)
    add_read_args(p)
    p.add_argument(
        "--projected",
        action="store_true",
        help="store the stage-2 projected latent (for downstream models; not decodable)",
    )
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="latent file -> image in the original geometry and units")
    p.add_argument("latent", help="latent .nii.gz with its .json sidecar")
    add_output_arg(p, "image file (.nii.gz, .mha, .nrrd, .tif, ...) or, with --format dicom, a new folder")
    add_format_arg(p)
    p.add_argument("-m", "--model", help="override the model named in the sidecar")
    p.add_argument("--weights", help="weights file for the model")
    add_trust_arg(p)
    add_codec_args(p, decode_only=True)
    add_png_arg(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "reconstruct", help="encode + decode; output in the input's geometry and units"
    )
    p.add_argument("input", help="image file or DICOM series folder")
    add_output_arg(p, "image file (.nii.gz, .mha, .nrrd, .tif, ...) or, with --format dicom, a new folder")
    add_model_args(p)
    add_codec_args(p)
    add_read_args(p)
    add_format_arg(p)
    p.add_argument(
        "--metrics", metavar="FILE", help="write PSNR and MS-SSIM against the input as JSON"
    )
    add_png_arg(p)
    p.set_defaults(func=cmd_reconstruct)

    _optional_commands(sub)
    return parser


def _optional_commands(sub) -> None:
    """Commands whose implementation lives in other subpackages."""

    p = sub.add_parser("analyze", help="metrics, maps, subbands, hallucination and figures")
    add_analyze_arguments(p)
    p.set_defaults(func=run_analyze)

    p = sub.add_parser("sr", help="latent-diffusion super-resolution of an image or volume")
    add_sr_arguments(p)
    p.set_defaults(func=run_sr)

    p = sub.add_parser("train-sr", help="train a latent-diffusion SR UNet (YAML config, torchrun-ready)")
    add_train_sr_arguments(p)
    p.set_defaults(func=run_train_sr)

    p = sub.add_parser("train", help="train or fine-tune a MedVAE model from a YAML config (torchrun-ready)")
    add_train_arguments(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("bench", help="speed, memory, quality, SR and CAD-efficiency benchmarks")
    add_bench_arguments(p)

    p = sub.add_parser("cad", help="diagnostic models on latents vs images (train, proxy task)")
    add_cad_arguments(p)
    p.set_defaults(func=run_cad)

    add_study_arguments(sub)

    p = sub.add_parser("demo", help="napari with the plugin on a bundled real sample (headless: demo_out/)")
    p.add_argument("--headless", action="store_true", help="no window: write outputs and screenshots")
    p.add_argument("--out", default="demo_out", help="output folder for the headless run")
    p.set_defaults(func=cmd_demo)


# ----------------------------------------------------------------------------- commands


def cmd_models(args: argparse.Namespace) -> int:
    if args.download:
        path = run_steps(f"download {args.download}", download_steps(get_spec(args.download)), unit="B")
        print(f"downloaded {args.download} to {path}")
        return 0
    if args.inspect:
        return _print_inspection(args)
    records, sr_records = list_models(), list_sr_models()
    if args.json:
        print(json.dumps({"autoencoders": records, "sr_models": sr_records}, indent=2))
        return 0
    print(f"{'name':16} {'dims':>4} {'f':>2} {'C':>2} {'in':>3} {'source':8} {'available':9} path")
    for r in records:
        print(
            f"{r['name']:16} {r['spatial_dims']:>3}D {r['factor']:>2} {r['latent_channels']:>2} "
            f"{r['in_channels']:>3} {r['source']:8} {'yes' if r['available'] else 'no':9} {r['path']}"
        )
    print(f"\n{'SR model':16} {'scale':>5} {'autoencoder':16} {'available':9} path")
    for r in sr_records:
        print(f"{r['name']:16} {'x' + str(r['scale']):>5} {r['autoencoder']:16} "
              f"{'yes' if r['available'] else 'no':9} {r['path']}")
    return 0


def _print_inspection(args: argparse.Namespace) -> int:
    report = inspect_checkpoint(args.inspect, args.trust_checkpoint)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['file']}")
    print(f"  architecture: {json.dumps(report['architecture'])}")
    lora = " (LoRA merged)" if report["lora_merged"] else ""
    print(f"  model tensors: {report['model_tensors']} ({report['model_values']:,} values){lora}")
    print(f"  ignored tensors: {len(report['ignored_tensors'])} {report['ignored_summary']}")
    for key in report["ignored_tensors"]:
        print(f"    {key}")
    print(f"  other entries (not loaded): {', '.join(report['other_entries']) or 'none'}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    target = convert_checkpoint(args.checkpoint, args.output, args.trust_checkpoint)
    print(f"{args.checkpoint} -> {target}: safetensors, loads by path (-m {target})")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    inputs = find_inputs(args.inputs)
    many = len(inputs) > 1 or is_dataset(args.inputs)
    out = Path(args.output)
    if many and out.suffix:
        raise OutputError(f"{out}: several inputs need an output folder, not a file name")
    args.device = rank_device(args.device, os.environ)
    rank, world = shard()
    models: dict[int, object] = {}

    def model_for(ndim: int):
        key = ndim if args.model is None else 0  # the default model depends on the image's ndim
        if key not in models:
            models[key] = _load_model(args, ndim)
        return models[key]

    def normalization(volume):  # --window, else None: fitted to each image
        return fit_normalization(volume.array, volume.modality, window=args.window)

    encoder = Encoder(model_for, _options(args), normalization if args.window else lambda v: None,
                      args.projected, lambda steps: run_steps("encode", steps))

    def identity(ndim: int) -> tuple[str, str | None]:
        model = model_for(ndim)
        return model_name(model), weights_sha256(model)

    def report(p) -> None:
        done = p.payload
        if p.stage == "encoded":
            write(
                f"{done.item.path} -> {done.target}: latent {tuple(done.latent.array.shape)} from "
                f"image {done.latent.image_shape}, storage ratio {done.latent.storage_ratio:.1f}x"
            )
        elif p.stage == "failed":
            write(f"failed: {done.error}")

    jobs = [(i, out / latent_path(i) if many or out.is_dir() else out) for i in inputs[rank::world]]
    if many and rank == 0:
        write_failures(out, [])  # a failures list from an earlier run no longer holds
    mine = drive(encode_dataset(jobs, lambda item: read_input(item.path, args), encoder,
                                identity if many else None, keep_going=many),
                 "encode dataset", unit="input", report=report, terminal_only=True)
    summary = gather(mine, world)
    if not many:
        return 0
    print(f"rank {rank}/{world}: encoded {mine.encoded}, skipped {mine.skipped} already done, "
          f"failed {len(mine.failures)}, of {len(inputs)} inputs")
    if rank != 0:
        return 0  # rank 0 reports the whole run, after every rank has finished
    if world > 1:
        print(f"all {world} ranks: encoded {summary.encoded}, skipped {summary.skipped} "
              f"already done, failed {len(summary.failures)}, of {summary.total} inputs")
    failures = write_failures(out, summary.failures)
    if summary.failures:
        raise InputError(f"{len(summary.failures)} of {summary.total} failed; listed in {failures}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    check_output(args.output, args.format)
    latent = load_latent(args.latent)
    model = None
    if args.model or args.weights:
        model = _load_model(args, len(latent.image_shape), default=latent.model)
    volume = run_steps("decode", decode_steps(latent, model, _options(args)))
    write_image(volume, args.output, args, f"MedVAE decoded {latent.model}")
    print(f"{args.latent} -> {args.output}: image {volume.shape}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    check_output(args.output, args.format)
    volume = read_input(args.input, args)
    model = _load_model(args, volume.ndim)
    _announce_long_run(model, volume, args)
    latent = run_steps("encode", _encode_steps(volume, model, args))
    recon = run_steps("decode", decode_steps(latent, model, _options(args)))
    metrics = None
    if args.metrics:  # PSNR / MS-SSIM as in `medvae bench quality` (CT: within the HU window)

        value_range = scored_range(volume)
        metrics = scores(volume.array, recon.array, value_range) | {"data_range": list(value_range)}
    write_image(recon, args.output, args, f"MedVAE reconstruction {_model_label(model)}")
    line = f"{args.input} -> {args.output}: {_model_label(model)}, shape {recon.shape}"
    if metrics:
        metrics.update(input=str(args.input), output=str(args.output), model=_model_label(model))
        atomic_write_text(Path(args.metrics), json.dumps(metrics, indent=2))
        line += f", PSNR {metrics['psnr_db']:.2f} dB"
    print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the plugin's demo in its own interpreter: the engine never imports napari or Qt."""
    if importlib.util.find_spec("napari") is None or importlib.util.find_spec("napari_medvae") is None:
        raise InputError("the demo needs napari (pip install 'napari-medvae[napari]')")
    command = [sys.executable, "-m", "napari_medvae.demo", "--out", args.out]
    return subprocess.call(command + (["--headless"] if args.headless else []))


# ----------------------------------------------------------------------------- helpers


def _load_model(args: argparse.Namespace, ndim: int, default: str | None = None):
    volume_default = DEFAULT_3D if ndim == 3 and get_spec(DEFAULT_3D).available else DEFAULT_2D
    name = args.model or default or volume_default  # 2D starter slice-wise if the 3D one is missing
    return load_codec(
        name, spatial_dims=ndim, default_factor=getattr(args, "factor", 4), weights=args.weights,
        device=args.device, trust_checkpoint=getattr(args, "trust_checkpoint", False),
    )


def _model_label(model) -> str:
    return str(getattr(model, "name", type(model).__name__))


def _options(args: argparse.Namespace):
    max_memory = getattr(args, "max_memory", None)
    try:
        return CodecOptions(
            axis=getattr(args, "axis", None),
            batch_size=args.batch_size,
            precision=args.precision,
            roi=args.roi,
            max_memory=parse_bytes(max_memory) if max_memory is not None else None,
            overlap=args.overlap,
            tile=args.tile or None,
            whole=args.tile == 0,
            sample=getattr(args, "sample", False),
            seed=getattr(args, "seed", 0),
            refine=getattr(args, "refine", 0),
            refiner=getattr(args, "refiner", True),
        )
    except ValueError as e:
        raise InputError(str(e)) from None


def _announce_long_run(model, volume, args: argparse.Namespace) -> None:
    """Say how long a reconstruction will take when the prediction is over a minute."""

    estimate = estimate_reconstruction(model, volume, _options(args))
    if estimate is not None and estimate.seconds > LONG_RUN_SECONDS:
        print(f"note: {args.input}: {estimate.describe()}", file=sys.stderr)


def _encode_steps(volume, model, args: argparse.Namespace):
    norm = (
        fit_normalization(volume.array, volume.modality, window=args.window)
        if args.window
        else None
    )
    return encode_steps(volume, model, _options(args), normalization=norm)

