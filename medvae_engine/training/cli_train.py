"""`medvae train CONFIG.yaml [--resume]`: argument wiring and the rank-0 progress bar.

Also runnable as ``python -m medvae_engine.training.cli_train`` (and under ``torchrun``).
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from ..errors import MedVAEError


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the train command."""
    parser.add_argument("config", help="training YAML (see medvae_engine/configs/train_*.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from run.output_dir/checkpoint.pt")
    parser.add_argument("--export-only", action="store_true",
                        help="write model.safetensors + model card from the last checkpoint, no "
                        "training")
    parser.add_argument("-o", "--output-dir", help="override run.output_dir")
    parser.add_argument("--steps", type=int, help="override run.steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any key, e.g. --set data.batch_size=4 (value read as YAML)")


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedVAEError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    if args.output_dir:
        out["run.output_dir"] = args.output_dir
    if args.steps is not None:
        out["run.steps"] = args.steps
    return out


def run_train(args: argparse.Namespace) -> int:
    """Run a training; a tqdm bar on rank 0. MedVAEError propagates for the CLI to print."""
    from .trainer import run_training

    steps = run_training(args.config, resume=args.resume, overrides=_overrides(args),
                         export_only=args.export_only)
    return show_progress(steps, ("loss", "l1", "embed", "val_psnr"))


def show_progress(steps, keys: tuple[str, ...]) -> int:
    """Drive a training generator with a tqdm bar on rank 0 showing the chosen float metrics."""
    from tqdm import tqdm

    main_process = os.environ.get("RANK", "0") == "0"
    bar = None
    for progress in steps:
        if not main_process:
            continue
        if bar is None:
            bar = tqdm(total=progress["steps"], initial=progress["step"] - 1, unit="step",
                       dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 60.0)
        bar.update(1)
        shown = {k: f"{v:.4g}" for k, v in progress.items() if k in keys and isinstance(v, float)}
        if shown:
            bar.set_postfix(shown, refresh=False)
    if bar is not None:
        bar.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medvae train", description="Train a MedVAE autoencoder.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except MedVAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
