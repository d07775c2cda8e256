"""`medvae sr` and `medvae train-sr`: argument wiring for super-resolution.

Also runnable as ``python -m medvae_engine.cli.sr sr|train-sr ...`` (train-sr under torchrun).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..codec.spec import load_codec
from ..errors import InputError, MedVAEError, ModelError
from ..imaging.atomic import full_suffix
from ..imaging.io import check_output, write_volume
from ..imaging.normalization import fit_normalization
from ..models import weights_sha256
from ..models.zoo import DEFAULT_SR
from ..runtime.cli_progress import drive
from ..sr.pipeline import (
    SROptions,
    reconstruct_reference_steps,
    super_resolve_samples_steps,
    super_resolve_steps,
)
from ..sr.samplers import SAMPLERS
from ..sr.train_sr import run_sr_training
from ..sr.unet import load_sr_model
from ..training.config import config_overrides
from .common import add_format_arg, read_input, run_steps, write_image


def add_sr_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the sr command."""
    p.add_argument("input", help="LR image file or DICOM series folder (2D image or volume)")
    p.add_argument("-o", "--output", required=True, help="SR image file (.nii.gz, .mha, .png, ...)"
                   " or, with --format dicom, a new DICOM series folder")
    add_format_arg(p)
    p.add_argument("--sr-model", default=DEFAULT_SR,
                   help=f"SR UNet: a shipped name (default {DEFAULT_SR}), a .safetensors or "
                   "diffusers folder from 'medvae train-sr', or a latent-sr .ckpt")
    p.add_argument("-m", "--model", help="autoencoder: zoo name, checkpoint, diffusers VAE folder "
                   "or 'pixels' (default: the one named in the SR model's card)")
    p.add_argument("--weights", help="weights file for a named autoencoder")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS,
                   help="ddim (default), ddpm, flow (flow-matching models) or latent-sr (the "
                   "published sampler, for their released weights)")
    p.add_argument("--steps", type=int, help="sampler steps (default: ddim 50, ddpm 100, flow 16, "
                   "latent-sr 50)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 deterministic)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same output)")
    p.add_argument("--scale", type=int, help="SR factor per side (default: the model's, else 4)")
    p.add_argument("--axis", type=int, help="slice axis for volumes (default: coarsest)")
    p.add_argument("--batch-size", type=int, default=4, help="slices per batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                   help="intensity window mapped to [-1, 1] (default: CT [-1000, 1000], else "
                   "min-max)")
    p.add_argument("--modality", default="auto", choices=["auto", "ct", "mri", "xray"])
    p.add_argument("--frame", type=int, help="frame of a 4D image")
    p.add_argument("--series-uid", help="DICOM series to read from a folder holding several")
    p.add_argument("--keep-phi", action="store_true",
                   help="keep patient-identifying DICOM fields in output metadata")
    p.add_argument("--reference", help="HR reference image: its autoencoder reconstruction is "
                   "written to --ae-output (the noise floor for hallucination maps)")
    p.add_argument("--ae-output", help="where to write the reference's AE reconstruction")
    p.add_argument("--png-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="PNG output: map LO..HI to 0..255 (default: a PNG/JPEG input's own bit "
                   "depth, else the --window; other float results need it)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="draw N >= 2 samples (seeds SEED..SEED+N-1): write their mean as OUTPUT "
                   "and their per-voxel SD (the uncertainty map) as OUTPUT-stem.sd.nii.gz")


def add_train_sr_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the train-sr command (same overrides as ``medvae train``)."""
    p.add_argument("config", help="SR training YAML (see medvae_engine/configs/train_sr.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from run.output_dir/checkpoint.pt")
    p.add_argument("-o", "--output-dir", help="override run.output_dir")
    p.add_argument("--steps", type=int, help="override run.steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. --set data.batch_size=4 (value read as YAML)")


def run_sr(args: argparse.Namespace) -> int:
    """Super-resolve one input (and reconstruct the reference); MedVAEError for the CLI to print."""

    if bool(args.reference) != bool(args.ae_output):
        raise InputError("--reference and --ae-output go together")
    for target in filter(None, (args.output, args.ae_output)):
        check_output(target, args.format)
    if args.samples is not None and args.samples < 2:
        raise InputError(f"--samples {args.samples}: the uncertainty map needs at least 2 samples "
                         "(omit --samples for one)")
    try:
        options = SROptions(sampler=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed,
                            scale=args.scale, axis=args.axis, batch_size=args.batch_size,
                            precision=args.precision)
    except ValueError as e:
        raise InputError(str(e)) from None
    sr_model = load_sr_model(args.sr_model, device=args.device)
    autoencoder = _autoencoder(args, sr_model)
    volume = read_input(args.input, args)
    norm = (fit_normalization(volume.array, volume.modality, window=args.window)
            if args.window else None)
    sd = None
    if args.samples:
        result, sd = run_steps("super-resolve", super_resolve_samples_steps(
            volume, autoencoder, sr_model, options, args.samples, normalization=norm))
    else:
        result = run_steps("super-resolve", super_resolve_steps(volume, autoencoder, sr_model, options,
                                                           normalization=norm))
    ae = None
    if args.reference:
        reference = read_input(args.reference, args)
        if reference.shape != result.shape:
            raise InputError(f"{args.reference}: reference shape {reference.shape} differs from "
                             f"the SR output's {result.shape}")
        ae = run_steps("reconstruct", reconstruct_reference_steps(reference, autoencoder, options))
    label = f"MedVAE SR x{result.metadata.get('sr_scale', '')} {Path(args.sr_model).stem}"
    written = [write_image(result, args.output, args, label)]
    if sd is not None:  # the uncertainty map stays in float NIfTI, beside the output
        written.append(write_volume(sd, sd_path(args.output)))
    if ae is not None:
        written.append(write_image(ae, args.ae_output, args,
                                   f"MedVAE reconstruction {getattr(autoencoder, 'name', '')}"))
    for path in written:
        print(f"wrote {path}")
    return 0


def sd_path(output: str | Path) -> Path:
    """Where the uncertainty map of ``output`` goes: its stem (format suffix removed) + .sd.nii.gz."""

    output = Path(output)
    suffix = full_suffix(output)
    stem = output.name[: len(output.name) - len(suffix)] if suffix else output.name
    return output.with_name(stem + ".sd.nii.gz")


def _autoencoder(args: argparse.Namespace, sr_model):
    """--model, else the autoencoder the SR model's card names; warn on a weights mismatch."""

    name = args.model or sr_model.card.get("autoencoder")
    if not name:
        raise ModelError(f"{args.sr_model}: the SR model does not name its autoencoder; pass "
                         "--model")
    model = load_codec(name, weights=args.weights, device=args.device)
    expected = sr_model.card.get("autoencoder_sha256")
    if expected and weights_sha256(model) not in (None, expected):
        print(f"warning: autoencoder {name} is not the one {args.sr_model} was trained with",
              file=sys.stderr)
    return model


def run_train_sr(args: argparse.Namespace) -> int:
    """Run an SR training with the progress bar on rank 0."""

    steps = run_sr_training(args.config, resume=args.resume, overrides=config_overrides(args))
    drive(steps, "train-sr", keys=("loss", "val_psnr_sr", "val_psnr_bicubic"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medvae-sr", description="Latent-diffusion SR.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sr_arguments(sub.add_parser("sr", help="super-resolve an image or volume"))
    add_train_sr_arguments(sub.add_parser("train-sr", help="train an SR UNet from a YAML config"))
    args = parser.parse_args(argv)
    try:
        return run_sr(args) if args.command == "sr" else run_train_sr(args)
    except MedVAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
