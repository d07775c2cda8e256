"""`medvae train CONFIG.yaml [--resume]`: argument wiring; progress through the one CLI driver.

Also runnable as ``python -m medvae_engine.cli.train`` (and under ``torchrun``).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import MedVAEError
from ..runtime.cli_progress import drive
from ..training.config import config_overrides
from ..training.trainer import run_training


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


def run_train(args: argparse.Namespace) -> int:
    """Run a training with the progress bar on rank 0. MedVAEError propagates for the CLI to print."""

    steps = run_training(args.config, resume=args.resume, overrides=config_overrides(args),
                         export_only=args.export_only)
    drive(steps, "train", keys=("loss", "l1", "embed", "val_psnr"))
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
