"""``medvae bench sr``: an SR model on held-out real images, the SR model card's numbers.

Each held-out 2D image is degraded the way the model was trained (bicubic /s by default) in model
space and super-resolved with a fast and a full sampler (DDIM-50 and DDPM-1000 by default, same
seed). Both are scored against the HR image next to bicubic upsampling of the same LR image and
the autoencoder's reconstruction of the HR image (the ceiling an SR model in its latent space can
reach), in original units with the image's own range as data range (CT: the HU window), as in
``medvae bench quality``. Hallucinated and lost voxel rates use the AE error as noise floor.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..analysis.hallucination import hallucination
from ..analysis.metrics import to_unit_range
from ..analysis.spectrum import radial_spectrum
from ..codec.pipeline import CodecOptions
from ..codec.pipeline import reconstruct as ae_reconstruct
from ..codec.spec import load_codec
from ..data.degradation import crop_to_multiple, degrade_volume, resize
from ..errors import InputError
from ..imaging.atomic import atomic_write, atomic_write_text
from ..imaging.normalization import fit_normalization
from ..imaging.volume import Volume
from ..models.zoo import DEFAULT_SR, SR_MODELS
from ..runtime.cli_progress import drive
from ..runtime.progress import Progress, run
from ..sr.pipeline import SROptions, super_resolve_steps
from ..sr.unet import load_sr_model
from .quality import read_reference, scored_range, scores, table_cell, without_arrays

HELD_OUT_2D = ["builtin:pydicom/693_UNCR.dcm", "builtin:pydicom/MR_small.dcm"]


def add_sr_report_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``medvae bench sr``."""
    p.add_argument("--sr-model", default=DEFAULT_SR, help="shipped name or SR model file")
    p.add_argument("--images", nargs="+", default=HELD_OUT_2D,
                   help="held-out 2D HR images (files or builtin:<package>/<name>)")
    p.add_argument("--fast", default="ddim:50", help="fast sampler as SAMPLER:STEPS")
    p.add_argument("--full", default="ddpm:1000", help="reference sampler as SAMPLER:STEPS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--samples", type=int, default=4,
                   help="fast-sampler draws (seeds SEED..SEED+N-1) whose mean and per-pixel SD "
                   "score the uncertainty map against the real error (0: skip)")
    p.add_argument("--sr-out", help="output stem (default docs/model_cards/<SR model name>): "
                   "writes STEM.json, STEM.md and STEM_<image>.png")


def run_sr_report(args: argparse.Namespace) -> int:
    """Measure, then write the JSON, Markdown card and figures; prints the Markdown."""

    samplers = []
    for text in (args.fast, args.full):
        name, _, steps = text.partition(":")
        if not steps.isdigit():
            raise InputError(f"sampler {text!r}: expected SAMPLER:STEPS, e.g. ddim:50")
        samplers.append((name, int(steps)))
    sr_model = load_sr_model(args.sr_model)
    name = args.sr_model if args.sr_model in SR_MODELS else Path(sr_model.weights_path).stem
    if args.samples == 1 or args.samples < 0:
        raise InputError(f"--samples {args.samples}: use 0 (skip) or at least 2")
    report = drive(sr_report_steps(sr_model, args.images, samplers, args.seed, args.precision,
                                   args.samples), "bench sr", unit="image")
    report["sr_model"] = name
    stem = Path(args.sr_out or f"docs/model_cards/{name}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    for entry in report["images"]:
        figure(entry, stem.with_name(f"{stem.name}_{entry['label']}.png"))
    text = card_markdown(report, sr_model.card)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(
        {"training": sr_model.card, **without_arrays(report)}, indent=2))
    atomic_write_text(stem.with_suffix(".md"), text)
    print(text)
    return 0


HF_BINS, HF_TOP = 10, 3  # radial spectrum bins; the top ones scored as high frequencies
SD_DECILE = 0.9
# issue 16 targets: PSNR margin below bicubic, fast-vs-full sampler gap, fast-vs-full speed-up
BICUBIC_MARGIN_DB, SAMPLER_GAP_DB, SPEEDUP = 1.5, 0.3, 15


def high_frequency_error(test: np.ndarray, reference: np.ndarray) -> float:
    """Mean |log10 P_test - log10 P_HR| over the top three of ten radial spectrum bins: how far
    the fine-detail energy is from the truth (too little, as blur, or too much, as noise)."""

    diff = radial_spectrum(test, HF_BINS) - radial_spectrum(reference, HF_BINS)
    return float(np.mean(np.abs(diff[-HF_TOP:])))


def uncertainty_scores(sd: np.ndarray, error: np.ndarray, hallucinated: np.ndarray) -> dict:
    """How well a per-pixel SD map predicts the real error: Spearman correlation of SD with
    |SR - HR|, and the hallucinated-pixel rate among the top decile of SD against the rest."""

    top = sd >= np.quantile(sd, SD_DECILE)
    return {"spearman_sd_abs_error": float(spearmanr(sd.ravel(), error.ravel()).statistic),
            "hallucination_rate_top_decile_sd": float(hallucinated[top].mean()),
            "hallucination_rate_rest": float(hallucinated[~top].mean())}


def sr_report_steps(sr_model, images: list[str], samplers: list[tuple[str, int]], seed: int,
                    precision: str, samples: int = 0) -> Generator[Progress, None, dict]:
    """Scores, high-frequency spectrum errors, hallucination rates and timings per image, their
    means, and (``samples`` >= 2) how well the SD over fast-sampler draws predicts the error;
    yields Progress per image."""

    if not sr_model.card.get("autoencoder"):
        raise InputError(f"{sr_model.weights_path}: the SR model does not name its autoencoder "
                         "(bench sr scores models from 'medvae train-sr')")
    autoencoder = load_codec(sr_model.card["autoencoder"])
    degradation = sr_model.card.get("degradation") or {"kind": "bicubic", "scale": 4}
    rows = []
    for ref in images:
        volume = read_reference(ref)
        if volume.ndim != 2:
            raise InputError(f"{ref}: bench sr scores 2D images, this one is {volume.ndim}D")
        lr, hr, norm, lr_model_space = degrade_in_model_space(volume, degradation)
        h, w = hr.shape
        value_range = scored_range(hr)
        outputs = {"bicubic": norm.inverse(resize(lr_model_space, (h, w), "bicubic")),
                   "AE ceiling": ae_reconstruct(hr, autoencoder,
                                                CodecOptions(precision=precision)).array}
        seconds = {}
        for name, steps in samplers:
            options = SROptions(sampler=name, steps=steps, seed=seed, precision=precision)
            t0 = time.perf_counter()
            sr = run(super_resolve_steps(lr, autoencoder, sr_model, options, normalization=norm))
            seconds[f"SR {name}-{steps}"] = time.perf_counter() - t0
            outputs[f"SR {name}-{steps}"] = sr.array
        uncertainty = None
        if samples >= 2:
            fast_name, fast_steps = samplers[0]
            draws = [outputs[f"SR {fast_name}-{fast_steps}"]]
            for i in range(1, samples):
                options = SROptions(sampler=fast_name, steps=fast_steps, seed=seed + i,
                                    precision=precision)
                draws.append(run(super_resolve_steps(lr, autoencoder, sr_model, options,
                                                     normalization=norm)).array)
            stack = np.stack([d.astype(np.float64) for d in draws])
            outputs[f"SR {fast_name}-{fast_steps} mean of {samples}"] = stack.mean(0)
            uncertainty = stack.std(0, ddof=1)
        unit = {k: to_unit_range(v, value_range) for k, v in outputs.items()}
        reference = to_unit_range(hr.array, value_range)
        methods = {k: scores(hr.array, v, value_range) for k, v in outputs.items()}
        for key in outputs:
            methods[key]["hf_spectrum_error"] = high_frequency_error(unit[key], reference)
            if key == "AE ceiling":
                continue
            found = hallucination(reference, unit[key], unit["AE ceiling"])
            methods[key] |= {k: v for k, v in found.scalars().items()
                             if k in ("tau", "hallucination_rate", "loss_rate")}
            methods[key]["_labels"] = found.labels
            if key in seconds:
                methods[key]["seconds"] = seconds[key]
        extra = {}
        if uncertainty is not None:
            key = f"SR {samplers[0][0]}-{samplers[0][1]} mean of {samples}"
            extra["uncertainty"] = uncertainty_scores(
                uncertainty, np.abs(unit[key] - reference), methods[key]["_labels"] == 1)
        rows.append({"image": ref, "label": Path(ref.split("/")[-1]).name.split(".")[0],
                     "shape": [h, w], "modality": hr.modality, "methods": methods, **extra,
                     "_original": np.clip(hr.array, *value_range),
                     "_outputs": {k: np.clip(v, *value_range) for k, v in outputs.items()}})
        yield Progress(len(rows), len(images), "sr", info={"image": rows[-1]["label"]})
    return {"date": time.strftime("%Y-%m-%d"), "precision": precision, "seed": seed,
            "degradation": degradation, "samplers": [f"{n}-{s}" for n, s in samplers],
            "samples": samples, "images": rows, "summary": summary(rows, samplers)}


def degrade_in_model_space(image, degradation: dict):
    """(LR image in ``image``'s units, HR reference, the normalisation, LR in model space): the 2D
    ``image`` cropped to sides divisible by the scale, normalised and degraded as the SR model was
    trained (``degradation`` as in its card: kind, scale, sigma)."""

    scale = int(degradation["scale"])
    hr = crop_to_multiple(image, (0, 1), scale)
    norm = fit_normalization(hr.array, hr.modality)
    model_space = Volume(norm.forward(hr.array), hr.affine, hr.modality)
    low, _ = degrade_volume(model_space, degradation["kind"], scale, sigma=degradation.get("sigma"))
    return Volume(norm.inverse(low.array), low.affine, hr.modality), hr, norm, low.array


def summary(rows: list[dict], samplers: list[tuple[str, int]]) -> dict:
    """Means per method, the fast-vs-full speed-up and PSNR gap, and the ceiling check."""
    fast, full = (f"SR {n}-{s}" for n, s in samplers)
    names = list(rows[0]["methods"])
    means = {n: {k: float(np.mean([r["methods"][n][k] for r in rows]))
                 for k in rows[0]["methods"][n] if not k.startswith("_")} for n in names}
    speedups = [r["methods"][full]["seconds"] / r["methods"][fast]["seconds"] for r in rows]
    speedup = float(np.mean(speedups))
    gaps = [r["methods"][full]["psnr_db"] - r["methods"][fast]["psnr_db"] for r in rows]
    targets = {
        "psnr_within_1_5_db_of_bicubic":
            means[fast]["psnr_db"] >= means["bicubic"]["psnr_db"] - BICUBIC_MARGIN_DB,
        "hf_spectrum_closer_than_bicubic":
            means[fast]["hf_spectrum_error"] < means["bicubic"]["hf_spectrum_error"],
        "fast_within_0_3_db_of_full": all(abs(g) <= SAMPLER_GAP_DB for g in gaps),
        "fast_15x_faster_than_full": speedup >= SPEEDUP,
    }
    unsure = [r["uncertainty"] for r in rows if "uncertainty" in r]
    if unsure:
        means_unc = {k: float(np.mean([u[k] for u in unsure])) for k in unsure[0]}
    else:
        means_unc = None
    ceiling = {r["label"]: all(r["methods"]["AE ceiling"]["psnr_db"] > r["methods"][k]["psnr_db"]
                               for k in (fast, full)) for r in rows}
    return {"mean": means, "speedup_fast_vs_full": speedup,
            "speedup_per_image": speedups, "psnr_full_minus_fast_db": gaps,
            "ceiling_holds": ceiling, "targets": targets, "uncertainty": means_unc}


def card_markdown(report: dict, card: dict) -> str:
    """The SR model card: training summary, held-out table, sampler comparison, ceiling check."""

    s = report["summary"]
    names = list(s["mean"])
    fast, full = (f"SR {x}" for x in report["samplers"])
    lines = [f"# {report['sr_model']}", "",
             f"{card.get('kind', 'super-resolution')} x{card.get('scale', '?')} in the latent space of "
             f"`{card.get('autoencoder', '?')}`, trained with `medvae train-sr` on "
             f"{card.get('created', '?')}: {card.get('steps', '?')} steps, objective "
             f"{card.get('objective', '?')}, degradation {json.dumps(card.get('degradation'))}.", "",
             "Training images: " + ", ".join(d for d in card.get("data", []) if not d.startswith("val:")),
             "", "Held out (never trained on): " + ", ".join(
                 d[4:] for d in card.get("data", []) if d.startswith("val:")), "",
             "Final training values: " + json.dumps(card.get("final_losses", {})), "",
             "Validation during training (PSNR of [0, 1] crops): " + json.dumps(card.get("validation", {})),
             "", f"## Held-out images ({report['date']}, {report['precision']}, seed {report['seed']})",
             "", "PSNR dB / MS-SSIM in original units against the HR image (CT: within the [-1000, "
             "1000] HU window); LR made by the training degradation; hallucinated / lost: voxel "
             "fractions whose SR error exceeds the AE noise floor (mean + 2 SD of |AE - HR|).", "",
             "| image | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in report["images"]:
        lines.append(f"| {r['label']} {tuple(r['shape'])} {r['modality']} | "
                     + " | ".join(table_cell(r["methods"][n]) for n in names) + " |")
    lines.append("| **mean** | " + " | ".join(table_cell(s["mean"][n]) for n in names) + " |")
    lines += ["", "High-frequency spectrum error (mean |log10 P - log10 P_HR| over the top 3 of 10 "
              "radial bins; lower is closer to the HR detail energy), hallucinated / lost voxel "
              "rates against the AE noise floor (k = 2), seconds end to end:", "",
              "| image | method | HF spectrum error | hallucinated | lost | seconds |",
              "|---|---|---|---|---|---|"]
    for r in report["images"]:
        for n in names:
            m = r["methods"][n]
            rates = (f"{100 * m['hallucination_rate']:.2f}% | {100 * m['loss_rate']:.2f}%"
                     if "hallucination_rate" in m else "(noise floor) | -")
            secs = f"{m['seconds']:.1f}" if "seconds" in m else "-"
            lines.append(f"| {r['label']} | {n} | {m['hf_spectrum_error']:.3f} | {rates} | "
                         f"{secs} |")
    if s.get("uncertainty"):
        lines += ["", f"Uncertainty map (per-pixel SD over {report['samples']} {fast[3:]} "
                  "draws, seeds from the bench seed) against the real error of their mean:", "",
                  "| image | Spearman(SD, abs error) | hallucinated in top SD decile | "
                  "hallucinated elsewhere |", "|---|---|---|---|"]
        for r in report["images"]:
            u = r["uncertainty"]
            lines.append(f"| {r['label']} | {u['spearman_sd_abs_error']:.3f} | "
                         f"{100 * u['hallucination_rate_top_decile_sd']:.2f}% | "
                         f"{100 * u['hallucination_rate_rest']:.2f}% |")
    lines += ["", "## Findings", "",
              f"- {fast[3:]} against {full[3:]}: {s['speedup_fast_vs_full']:.1f}x faster (per image "
              + ", ".join(f"{x:.1f}x" for x in s["speedup_per_image"]) + "), PSNR difference "
              + ", ".join(f"{g:+.2f} dB" for g in s["psnr_full_minus_fast_db"]) + f" ({full[3:]} minus "
              f"{fast[3:]}).",
              "- Ceiling principle (AE reconstruction PSNR above SR PSNR): "
              + ", ".join(f"{k} {'holds' if v else 'does not hold'}" for k, v in s["ceiling_holds"].items())
              + ".",
              f"- Mean PSNR: SR {s['mean'][fast]['psnr_db']:.2f} dB, bicubic "
              f"{s['mean']['bicubic']['psnr_db']:.2f} dB, AE ceiling "
              f"{s['mean']['AE ceiling']['psnr_db']:.2f} dB.",
              f"- Mean HF spectrum error: SR {s['mean'][fast]['hf_spectrum_error']:.3f}, bicubic "
              f"{s['mean']['bicubic']['hf_spectrum_error']:.3f}.", "", "## Targets", "",
              "| target | measured | |", "|---|---|---|"]
    lines += [f"| {text} | {measured} | {'met' if s['targets'][key] else '**MISSED**'} |"
              for key, text, measured in target_rows(s, fast, full)]
    return "\n".join(lines + [""])


def target_rows(s: dict, fast: str, full: str) -> list[tuple[str, str, str]]:
    """Each target of ``summary`` as (key, what it asks, what was measured), for the card."""
    mean = s["mean"]
    gaps = s["psnr_full_minus_fast_db"]
    return [
        ("psnr_within_1_5_db_of_bicubic", f"mean PSNR >= bicubic - {BICUBIC_MARGIN_DB} dB",
         f"{fast[3:]} {mean[fast]['psnr_db']:.2f} dB, bicubic {mean['bicubic']['psnr_db']:.2f} dB"),
        ("hf_spectrum_closer_than_bicubic", "mean HF spectrum error below bicubic's",
         f"{mean[fast]['hf_spectrum_error']:.3f} vs {mean['bicubic']['hf_spectrum_error']:.3f}"),
        ("fast_within_0_3_db_of_full", f"{fast[3:]} within {SAMPLER_GAP_DB} dB of {full[3:]} on every image",
         f"largest gap {max(abs(g) for g in gaps):.2f} dB"),
        ("fast_15x_faster_than_full", f"{fast[3:]} >= {SPEEDUP}x faster than {full[3:]} end to end",
         f"{s['speedup_fast_vs_full']:.1f}x (mean of per-image ratios)"),
    ]


def figure(entry: dict, path: Path) -> None:
    """HR, bicubic, both SR samples and the AE ceiling; below, |error| maps and the fast sample's
    hallucinated (red) / lost (blue) voxels over the HR image."""
    from matplotlib.figure import Figure  # lazy: matplotlib takes about half a second to import

    hr, outputs = entry["_original"], entry["_outputs"]
    names = list(outputs)
    fast = next(n for n in names if n.startswith("SR "))
    lo, hi = float(hr.min()), float(hr.max())
    err_max = max(float(np.abs(v - hr).max()) for v in outputs.values()) or 1.0
    fig = Figure(figsize=(2.6 * (len(names) + 1), 6.0))
    axes = fig.subplots(2, len(names) + 1)
    axes[0, 0].imshow(hr, cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("HR reference", fontsize=9)
    labels = entry["methods"][fast]["_labels"]
    overlay = np.zeros((*labels.shape, 4))
    overlay[labels == 1] = (1, 0, 0, 0.8)
    overlay[labels == 2] = (0, 0.4, 1, 0.8)
    axes[1, 0].imshow(hr, cmap="gray", vmin=lo, vmax=hi)
    axes[1, 0].imshow(overlay)
    axes[1, 0].set_title(f"{fast[3:]}: hallucinated / lost", fontsize=9)
    for i, name in enumerate(names, start=1):
        axes[0, i].imshow(outputs[name], cmap="gray", vmin=lo, vmax=hi)
        axes[0, i].set_title(f"{name}\n{entry['methods'][name]['psnr_db']:.2f} dB", fontsize=9)
        axes[1, i].imshow(np.abs(outputs[name] - hr), cmap="magma", vmin=0, vmax=err_max)
        axes[1, i].set_title("|error|", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    h, w = entry["shape"]
    fig.suptitle(f"{entry['label']} ({entry['modality']}, {h}x{w})", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
