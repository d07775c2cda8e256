"""``medvae cad train|proxy``: classifiers on images, interpolated images and latents."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Generator
from pathlib import Path

import torch

from ..cad.datasets import cached_represent, load_input, read_labelled_csv, split_indices
from ..cad.models import STEMS
from ..cad.proxy import LESION_KINDS, LesionSpec, ProxySettings, proxy_markdown, run_proxy
from ..cad.train import Split, TrainSettings, evaluate_inputs, training_epochs
from ..errors import InputError
from ..models.zoo import cache_dir
from ..runtime.cli_progress import drive
from ..runtime.progress import Progress, rebased
from .common import write_results

INPUTS_HELP = ("classifier inputs, as codec specs: 'pixels' (the image itself), a baseline at a "
               "factor ('bicubic@4': the image downsampled to the latent size) or an autoencoder "
               "name or checkpoint path (its stage-2 latent)")


def add_cad_arguments(p: argparse.ArgumentParser) -> None:
    """``cad train CSV`` and ``cad proxy``."""
    sub = p.add_subparsers(dest="cad_command", metavar="{train,proxy}", required=True)
    t = sub.add_parser("train", help="classifiers on images, interpolated images and latents")
    t.add_argument("csv", help="CSV with path,label columns (optional split=train/test, frame, "
                               "modality); relative paths are relative to the CSV")
    t.add_argument("--inputs", nargs="+", default=["pixels", "bicubic@4", "starter_4_1_2d"],
                   help=INPUTS_HELP)
    t.add_argument("--size", type=int, nargs="+",
                   help="centre crop / edge pad every image to this shape (default: all equal)")
    t.add_argument("--test-fraction", type=float, default=0.3,
                   help="stratified held-out fraction when the CSV has no split column")
    t.add_argument("--split-seed", type=int, default=0)
    _classifier_args(t)
    _output_args(t, "cad_results.json")

    x = sub.add_parser("proxy", help="lesion-detection proxy on real backgrounds (offline)")
    defaults = ProxySettings()
    x.add_argument("--inputs", nargs="+", default=list(defaults.inputs), help=INPUTS_HELP)
    x.add_argument("--contrasts", type=float, nargs="+", default=list(defaults.contrasts),
                   help="peak lesion intensity as a fraction of the intensity range")
    lesion = LesionSpec()
    x.add_argument("--lesion", choices=LESION_KINDS, default=lesion.kind)
    x.add_argument("--spot-fwhm", type=float, default=lesion.spot_fwhm, help="pixels")
    x.add_argument("--spots", type=int, default=lesion.spots, help="spots per cluster")
    x.add_argument("--line-width", type=float, default=lesion.line_width, help="FWHM, pixels")
    x.add_argument("--line-length", type=float, default=lesion.line_length,
                   help="fraction of the crop side")
    x.add_argument("--side", type=int, default=defaults.side, help="crop side in pixels")
    x.add_argument("--n-train", type=int, default=defaults.n_train)
    x.add_argument("--n-test", type=int, default=defaults.n_test)
    x.add_argument("--data-seed", type=int, default=defaults.data_seed)
    _classifier_args(x)
    _output_args(x, "cad_proxy.json")


def _classifier_args(p: argparse.ArgumentParser) -> None:
    d = TrainSettings()
    p.add_argument("--arch", default=d.arch, help="resnet10..200, seresnet50/101/152, "
                                                  "densenet121/169/201/264 (MONAI)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--stem", choices=STEMS, default=d.stem,
                   help="auto: stride-1 stem without max pool for inputs under 32 per side")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (torchrun: one per process)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--cache", default=str(cache_dir() / "cad_latents"),
                   help="folder caching encoded inputs ('' to disable)")


def _output_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("-o", "--output", default=default, help="results JSON")
    p.add_argument("--markdown", help="also write the results table as Markdown")


def _train_settings(args: argparse.Namespace) -> TrainSettings:
    try:
        return TrainSettings(args.arch, args.lr, args.weight_decay, args.epochs, args.batch_size,
                             tuple(args.seeds), args.stem, args.device)
    except ValueError as e:
        raise InputError(f"classifier settings: {e}") from None


def run_cad(args: argparse.Namespace) -> int:
    """Run ``cad train`` or ``cad proxy``; the main process writes JSON (and Markdown)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = _train_settings(args)
    cache = args.cache or None
    if args.cad_command == "proxy":
        try:
            lesion = LesionSpec(kind=args.lesion, contrast=args.contrasts[0],
                                spot_fwhm=args.spot_fwhm, spots=args.spots,
                                line_width=args.line_width, line_length=args.line_length)
            for c in args.contrasts:
                dataclasses.replace(lesion, contrast=c)
        except ValueError as e:
            raise InputError(f"lesion settings: {e}") from None
        proxy = ProxySettings(tuple(args.inputs), tuple(args.contrasts), lesion, args.side,
                              args.n_train, args.n_test, args.data_seed, cache, args.device)
        results = drive(run_proxy(proxy, settings), "cad proxy", unit="unit")
        table = proxy_markdown(results)
    else:
        results = drive(_csv_experiment(args, settings, cache), "cad train", unit="unit")
        table = csv_markdown(results)
    if int(os.environ.get("RANK", "0")) == 0:
        write_results(args.output, results, args.markdown, table)
        print(table, end="")
    return 0


def _csv_experiment(
    args: argparse.Namespace, settings: TrainSettings, cache: str | None
) -> Generator[Progress, None, dict]:
    data = read_labelled_csv(args.csv, tuple(args.size) if args.size else None)
    if data.split is not None:
        train = [i for i, s in enumerate(data.split) if s == "train"]
        test = [i for i, s in enumerate(data.split) if s == "test"]
    else:
        train, test = split_indices(data.labels, args.test_fraction, args.split_seed)
    if len(test) == 0 or len(set(data.labels[test].tolist())) < 2:
        raise InputError(f"{args.csv}: the test split needs samples of at least two classes")
    spatial_dims = data.arrays.ndim - 1
    splits = {}
    encoded, total = len(args.inputs), len(args.inputs) + training_epochs(len(args.inputs), settings)
    for i, spec in enumerate(args.inputs):
        kind = load_input(spec, spatial_dims, args.device)
        features = cached_represent(data.arrays, kind, cache)
        splits[spec] = Split(features[train], data.labels[train], features[test], data.labels[test])
        yield Progress(i + 1, total, "encode", info={"input": spec})
    results = yield from rebased(evaluate_inputs(splits, len(data.classes), settings), encoded,
                                 total)
    return {
        "task": "csv classification",
        "csv": str(Path(args.csv).resolve()),
        "classes": data.classes,
        "metric": "binary AUROC" if len(data.classes) == 2 else "macro one-vs-rest AUROC",
        "n_train": len(train),
        "n_test": len(test),
        "train": dataclasses.asdict(settings),
        "inputs": results,
    }


def csv_markdown(results: dict) -> str:
    """One row per input: shape seen by the classifier and AUROC mean ± SD over seeds."""
    lines = [f"| input | classifier input shape | {results['metric']} (mean ± SD) | per seed |",
             "|---|---|---|---|"]
    for name, r in results["inputs"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in r["auroc"])
        lines.append(f"| {name} | {tuple(r['input_shape'])} | {r['mean']:.3f} ± {r['sd']:.3f} | "
                     f"{per_seed} |")
    return "\n".join(lines) + "\n"


