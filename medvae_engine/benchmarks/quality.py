"""``medvae bench quality``: models against interpolation at the same factor on held-out real images.

Every method reconstructs each image in its original units; PSNR and MS-SSIM use the image's own
range as data range (FACTS conventions), except CT, scored within the [-1000, 1000] HU window that
every method (baselines included) is given: air padding at -3024 HU would otherwise dominate.
2D models and 2D baselines run slice-wise on volumes; 3D models are compared with the 3D baselines
(trilinear, cubic spline). Writes JSON, a Markdown table, PNG figures (reconstructions and error
maps of the central slice) and a model card per model.
An image reference may end in a region, ``REF[a:b, :]`` with ``start:stop`` fractions or ``:`` per
array axis (the training configs' ``region``): one half of the RG1_UNCR radiograph (DICOM rows
978-1954, held out by configs/starter_4_1_2d_radiograph.yaml, which trains on the other half) is
scored at its native pixel size (a centred crop of at most ``--max-side`` pixels a side: whole-image
attention is quadratic and slow on a CPU). A model whose training card lists the image's pixels for
training is marked in the table.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..analysis.metrics import Unavailable, ms_ssim, psnr, to_unit_range
from ..codec.baselines import get_baseline
from ..codec.pipeline import CodecOptions, reconstruct
from ..codec.refine import learned_refiner_steps
from ..data.sources import region_slices, regions_disjoint, resolve_builtin
from ..errors import ConfigError, InputError
from ..imaging.atomic import atomic_write, atomic_write_text
from ..imaging.io import read_volume
from ..imaging.normalization import CT_WINDOW
from ..imaging.volume import Volume
from ..models import MODELS, load_model
from ..models.checkpoints import read_state_dict
from ..runtime.cli_progress import drive
from ..runtime.progress import Progress, run
from ..training.config import check_region
from ..training.trainer import model_card_markdown

# The [starter] issue's targets: mean PSNR margin (dB) over bicubic (2D models) or over the best 3D
# interpolation (3D models) on the held-out images.
HELD_OUT = ["builtin:pydicom/MR_small.dcm", "builtin:pydicom/693_UNCR.dcm", "builtin:nibabel/anatomical",
            "builtin:dipy/aniso_vox", "builtin:pydicom/RG1_UNCR.dcm[:, 0.5:1]"]
MAX_SIDE = 768  # 2D images larger than this a side are scored on their centred crop
FLAT_BLOCK = 32  # flat regions: blocks of this side whose SD is below FLAT_SD of the data range
FLAT_SD = 0.01
BASELINES_2D = ("nearest", "bilinear", "bicubic")
BASELINES_3D = ("trilinear", "spline")


def add_quality_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=["starter_4_1_2d", "starter_4_3_2d"],
                   help="zoo names or checkpoint files")
    p.add_argument("--images", nargs="+", default=HELD_OUT,
                   help="held-out images (files or builtin:<package>/<name>, optionally ending in a "
                        "region [start:stop, ...] of fractions per array axis, ':' for all)")
    p.add_argument("--axis", type=int, default=None, help="slice axis for 2D methods on volumes")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--max-side", type=int, default=MAX_SIDE,
                   help="2D images larger than this (pixels a side) are scored on their centred "
                        "crop at native size (0: whole images; large ones are slow on a CPU)")
    p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="also score each model with its latents refined by STEPS gradient steps "
                        "(codec/refine.py), as a row of its own; images a 2D model would tile are "
                        "left out of that row")
    p.add_argument("--quality-out", default="docs/model_cards/quality",
                   help="output stem: writes STEM.json, STEM.md and STEM_<image>.png")


def run_quality(args: argparse.Namespace) -> int:
    report = drive(quality_report_steps(args.models, args.images, args.axis, args.precision,
                                        args.max_side, args.refine), "bench quality", unit="image")
    stem = Path(args.quality_out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(without_arrays(report), indent=2))
    atomic_write_text(stem.with_suffix(".md"), markdown(report))
    for image in report["images"]:
        figure(image, stem.with_name(f"{stem.name}_{image['label']}.png"))
    for name in args.models:
        write_model_card(name, report, stem)
    print(markdown(report))
    return 0


def write_model_card(name: str, report: dict, stem: Path) -> None:
    """docs/model_cards/<model>.md/.json: the training card, the quality margins and timings."""

    model = load_model(name)
    _, meta = read_state_dict(model.weights_path)
    card = json.loads(meta.get("card", "{}"))
    if not card:
        return
    model_name = model.name
    margins = margins_over_interpolation(model_name, model.spatial_dims, report)
    timing = inference_seconds(model)
    target = target_check(model_name, model.spatial_dims, report)
    refined = refined_name(model_name, report.get("refine", 0))
    refined_margins = margins_over_interpolation(refined, model.spatial_dims, report) if refined else {}
    refined_target = target_check(model_name, model.spatial_dims, report, refined) if refined else None
    result = {"name": model_name, "training": card, "quality_mean": report["mean"],
              "margin_over_best_interpolation_db": margins, "target": target,
              "refined": refined and {"name": refined, "margin_over_best_interpolation_db":
                                      refined_margins, "target": refined_target},
              "inference_seconds": timing}
    summary = model_card_markdown(card) if "stage" in card else f"# {model_name}\n\n{json.dumps(card)}\n"
    lines = [summary, "## Quality on held-out real images", "", markdown(report),
             "Margin over the best interpolation at the same factor (dB): "
             + ", ".join(f"{k} {v:+.2f}" for k, v in margins.items()), "",
             *([target_line(target), ""] if target else []),
             *([f"With latent refinement ({refined}, `--refine {report['refine']}`), margin (dB): "
                + ", ".join(f"{k} {v:+.2f}" for k, v in refined_margins.items()), ""]
               if refined else []),
             *([target_line(refined_target), ""] if refined_target else []),
             "## Inference time on this CPU (reconstruct, seconds)", "",
             *[f"- {k}: {v:.3f}" for k, v in timing.items()], ""]
    out = stem.parent / model_name
    atomic_write_text(out.with_suffix(".json"), json.dumps(without_arrays(result), indent=2))
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))


def margins_over_interpolation(name: str, spatial_dims: int, report: dict) -> dict[str, float]:
    """Per image, the model's PSNR minus the best interpolation of its own kind: 2D models against
    the 2D baselines, 3D models against the 3D ones (slice-wise bicubic keeps 4x the samples)."""
    baselines = BASELINES_2D if spatial_dims == 2 else BASELINES_3D
    return {r["label"]: r["methods"][name]["psnr_db"] - max(
                r["methods"][b]["psnr_db"] for b in r["methods"] if b in baselines)
            for r in report["images"] if name in r["methods"]}


def refined_name(name: str, steps: int) -> str | None:
    """The report's name for a model's row with refined latents (None without refinement)."""
    return f"{name} refine {steps}" if steps else None


def target_check(name: str, spatial_dims: int, report: dict, method: str | None = None) -> dict | None:
    """The model's target margin and the measured one of its row ``method`` (default: the model's
    own): mean PSNR minus bicubic's (2D), or the mean over volumes of PSNR minus the best 3D
    interpolation's (3D)."""
    goal = MODELS[name].target_margin_db if name in MODELS else None
    if goal is None:
        return None
    method = method or name
    rows = [r for r in report["images"] if method in r["methods"] and name not in r.get("trained_on", ())]
    if spatial_dims == 2:
        what = "mean PSNR at least bicubic"
        measured = float(np.mean([r["methods"][method]["psnr_db"] - r["methods"]["bicubic"]["psnr_db"]
                                  for r in rows]))
    else:
        what = "PSNR at least the best 3D interpolation (trilinear, cubic spline)"
        measured = float(np.mean([r["methods"][method]["psnr_db"] - max(
            r["methods"][b]["psnr_db"] for b in BASELINES_3D) for r in rows]))
    return {"target": f"{what} + {goal:.1f} dB", "target_db": goal, "measured_db": measured,
            "met": measured >= goal, "method": method}


def target_line(target: dict) -> str:
    """One Markdown line: the target, the measured margin and whether it was met."""
    gap = target["target_db"] - target["measured_db"]
    verdict = "met" if target["met"] else f"missed by {gap:.2f} dB"
    return (f"Target: {target['target']}; measured {target['measured_db']:+.2f} dB: {verdict}. "
            "What was tried and what limits it: docs/training.md, section The starter models.")


def inference_seconds(model) -> dict:
    """Reconstruction time of a 256^2 slice (2D models) or a 64^3 volume (3D: one window, so the
    time does not depend on the free memory), fp32 and bf16; for a model with a learned latent
    refiner also without it (``--no-refiner``), which shows what the refiner costs."""

    shape = (256, 256) if model.spatial_dims == 2 else (64, 64, 64)
    vol = Volume(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4), "mri")
    size = "x".join(map(str, shape))
    out = {}
    for refiner in (True, False) if learned_refiner_steps(model) else (True,):
        for precision in ("fp32", "bf16"):
            options = CodecOptions(precision=precision, refiner=refiner)
            reconstruct(vol, model, options)  # warm-up (kernel selection)
            t0 = time.perf_counter()
            reconstruct(vol, model, options)
            out[f"{size} {precision}{'' if refiner else ' --no-refiner'}"] = time.perf_counter() - t0
    return out


def quality_report(models: list[str], images: list[str], axis: int | None, precision: str,
                   max_side: int = MAX_SIDE, refine: int = 0) -> dict:
    """Every method's scores on every image, and their means (see `quality_report_steps`)."""
    return run(quality_report_steps(models, images, axis, precision, max_side, refine))


def quality_report_steps(models: list[str], images: list[str], axis: int | None, precision: str,
                         max_side: int = MAX_SIDE, refine: int = 0) -> Generator[Progress, None, dict]:
    """Reconstruct and score each image with every model and baseline (and, with ``refine``, every
    model again with refined latents), yielding Progress per image; returns the report."""

    loaded = [load_model(m) for m in models]
    sources = {m.name: training_sources(m) for m in loaded}
    rows = []
    for ref in images:
        volume = read_reference(ref)
        native = list(volume.shape)
        volume = centred_crop(volume, max_side)
        methods = [(m.name, m, 0) for m in loaded]
        methods += [(refined_name(m.name, refine), m, refine) for m in loaded if refine]
        dims = {m.spatial_dims for m in loaded}
        if 2 in dims:
            methods += [(b, get_baseline(b, 2, 4), 0) for b in BASELINES_2D]
        if 3 in dims and volume.ndim == 3:
            methods += [(b, get_baseline(b, 3, 4), 0) for b in BASELINES_3D]
        entry = {"image": ref, "label": reference_label(ref), "shape": list(volume.shape),
                 "native_shape": native, "modality": volume.modality, "methods": {},
                 "trained_on": [m for m in sources if trained_on(sources[m], ref)]}
        for name, model, steps in methods:
            if model.spatial_dims == 3 and volume.ndim != 3:
                continue
            t0 = time.perf_counter()
            try:
                recon = reconstruct(volume, model, CodecOptions(axis=axis, precision=precision,
                                                                refine=steps))
            except InputError:
                if steps:  # refinement runs on whole 2D slices only: no row for tiled ones
                    continue
                raise
            entry["methods"][name] = scores(volume.array, recon.array, scored_range(volume)) | {
                "seconds": time.perf_counter() - t0, "_recon": recon.array,
                "flat_offset_pct": flat_offset(volume.array, recon.array, scored_range(volume))}
        entry["_original"] = np.clip(volume.array, *scored_range(volume))  # what the scores compare
        rows.append(entry)
        yield Progress(len(rows), len(images), "quality", info={"image": entry["label"]})
    return {"date": time.strftime("%Y-%m-%d"), "precision": precision, "refine": refine,
            "images": rows, "mean": _means(rows)}


def flat_offset(reference: np.ndarray, test: np.ndarray, value_range: tuple[float, float]) -> float | None:
    """Mean absolute brightness offset (% of the data range) of the reconstruction over the flat
    regions of a 2D image: FLAT_BLOCK-side blocks whose SD is below FLAT_SD of the range. The
    low-frequency error a model trained on small textured crops makes on wide uniform areas."""
    if reference.ndim != 2:
        return None
    lo, hi = value_range
    ref = (np.clip(reference, lo, hi) - lo) / (hi - lo)
    tst = (np.clip(test, lo, hi) - lo) / (hi - lo)
    b = FLAT_BLOCK
    h, w = ref.shape[0] // b * b, ref.shape[1] // b * b

    def blocks(a):
        return a[:h, :w].reshape(h // b, b, w // b, b)

    flat = blocks(ref).std(axis=(1, 3)) < FLAT_SD
    if not flat.any():
        return None
    offset = np.abs(blocks(tst).mean(axis=(1, 3)) - blocks(ref).mean(axis=(1, 3)))
    return float(100.0 * offset[flat].mean())


def scored_range(volume) -> tuple[float, float]:
    """The intensity range scores use: the image's own, or for CT the HU window every codec keeps."""

    if volume.modality == "ct":
        return CT_WINDOW
    return float(volume.array.min()), float(volume.array.max())


def scores(reference: np.ndarray, test: np.ndarray, value_range: tuple[float, float]) -> dict:
    """PSNR (dB) and MS-SSIM after mapping ``value_range`` to [0, 1] (data range 1)."""

    ref, tst = to_unit_range(reference, value_range), to_unit_range(test, value_range)
    ms = ms_ssim(ref, tst)
    return {"psnr_db": psnr(ref, tst), "ms_ssim": None if isinstance(ms, Unavailable) else ms.value}


def _means(rows: list[dict]) -> dict:
    names = sorted({n for r in rows for n in r["methods"]})
    out = {}
    for n in names:
        vals = [r["methods"][n] for r in rows if n in r["methods"]]
        ms = [v["ms_ssim"] for v in vals if v["ms_ssim"] is not None]
        out[n] = {"psnr_db": float(np.mean([v["psnr_db"] for v in vals])),
                  "ms_ssim": float(np.mean(ms)) if ms else None, "images": len(vals)}
    return out


def markdown(report: dict) -> str:
    names = list(report["mean"])
    lines = ["| image | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    seen = {n for r in report["images"] for n in r.get("trained_on", [])}
    for r in report["images"]:
        cells = [table_cell(r["methods"].get(n)) + (" (trained on)" if n in r.get("trained_on", [])
                                                    else "") for n in names]
        lines.append(f"| {image_title(r)} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(table_cell(report["mean"][n]) for n in names) + " |")
    flat = [r for r in report["images"]
            if any(m.get("flat_offset_pct") is not None for m in r["methods"].values())]
    notes = []
    if seen:
        notes.append("(trained on): the model's training card lists these pixels for training, so "
                     "the image is not held out for it (its target margin leaves the image out).")
    if any(r.get("native_shape", r["shape"]) != r["shape"] for r in report["images"]):
        notes.append("A shape 'of N x M' is a centred crop at native pixel size of the image (or "
                     "region) named: `--max-side` bounds it, whole-image attention being quadratic.")
    if flat:
        notes += ["", f"Mean absolute offset over flat regions ({FLAT_BLOCK}-pixel blocks with SD "
                  f"< {100 * FLAT_SD:g}% of the range), % of the data range:", "",
                  "| image | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for r in flat:
            cells = [_pct(r["methods"].get(n, {}).get("flat_offset_pct")) for n in names]
            notes.append(f"| {image_title(r)} | " + " | ".join(cells) + " |")
    return ("PSNR dB / MS-SSIM in original units, f=4 per side; data range: the image's own range "
            "(CT: the [-1000, 1000] HU window that every method keeps).\n\n") + \
        "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def image_title(row: dict) -> str:
    """'label (shape) modality', the shape noting a crop of a larger native image."""
    shape = "x".join(map(str, row["shape"]))
    native = row.get("native_shape", row["shape"])
    if native != row["shape"]:
        shape += " of " + "x".join(map(str, native))
    return f"{row['label']} ({shape}) {row['modality']}"


def table_cell(v: dict | None) -> str:
    """'PSNR / MS-SSIM' of one method for a Markdown table ('-' when absent)."""
    if not v:
        return "-"
    ms = f" / {v['ms_ssim']:.4f}" if v.get("ms_ssim") is not None else ""
    return f"{v['psnr_db']:.2f}{ms}"


def figure(entry: dict, path: Path) -> None:
    """Central slice: original, then each method's reconstruction and absolute error."""
    from matplotlib.figure import Figure  # lazy: matplotlib takes about half a second to import

    orig = _central(entry["_original"])
    names = list(entry["methods"])
    fig = Figure(figsize=(2.6 * (len(names) + 1), 5.4))
    axes = fig.subplots(2, len(names) + 1)
    lo, hi = float(orig.min()), float(orig.max())
    axes[0, 0].imshow(orig.T, cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("original")
    axes[1, 0].axis("off")
    err_max = max(float(np.abs(_central(m["_recon"]) - orig).max()) for m in entry["methods"].values())
    for i, name in enumerate(names, start=1):
        rec = _central(entry["methods"][name]["_recon"])
        axes[0, i].imshow(rec.T, cmap="gray", vmin=lo, vmax=hi)
        axes[0, i].set_title(f"{name}\n{entry['methods'][name]['psnr_db']:.2f} dB", fontsize=9)
        im = axes[1, i].imshow(np.abs(rec - orig).T, cmap="magma", vmin=0, vmax=err_max or 1)
        axes[1, i].set_title("|error|", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="absolute error (image units)")
    fig.suptitle(f"{entry['label']} ({entry['modality']}), f=4 per side")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))


def _central(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 2 else a[:, :, a.shape[2] // 2]


def read_reference(ref: str):
    """A held-out image: a file path or builtin:<package>/<name>, optionally ending in a region
    ``[start:stop, ...]`` (fractions per axis, ``:`` for a whole axis)."""

    name, region = split_region(ref)
    path = resolve_builtin(name.removeprefix("builtin:")) if name.startswith("builtin:") else Path(name)
    volume = read_volume(path)
    if region is None:
        return volume
    return crop_volume(volume, region_slices(region, volume.shape, path))


def split_region(ref: str) -> tuple[str, tuple | None]:
    """``REF[a:b, :]`` -> (REF, ((a, b), None)); a reference without brackets has no region."""
    m = re.fullmatch(r"(.+)\[([^\]]*)\]", ref.strip())
    if not m:
        return ref, None
    region = []
    for part in m.group(2).split(","):
        part = part.strip()
        if part == ":":
            region.append(None)
            continue
        try:
            a, b = (float(x) for x in part.split(":"))
        except ValueError:
            raise ConfigError(f"{ref}: region entries must be ':' or start:stop fractions, got "
                              f"'{part}'") from None
        region.append((a, b))

    def fail(why):
        raise ConfigError(f"{ref}: region {why}")

    check_region(region, fail)
    return m.group(1), tuple(region)


def reference_label(ref: str) -> str:
    """A file-name-safe label: the image's stem, plus the region's fractions if any."""
    name, region = split_region(ref)
    label = Path(name.split("/")[-1]).name.split(".")[0]
    if region:
        label += "_" + "_".join("all" if b is None else f"{b[0]:g}-{b[1]:g}" for b in region)
    return label


def crop_volume(volume, slices: tuple[slice, ...]):
    """The sub-image at these slices, its affine moved to the new first voxel."""
    affine = volume.affine.copy()
    start = np.zeros(3)
    start[: len(slices)] = [s.start for s in slices]
    affine[:3, 3] += affine[:3, :3] @ start
    return Volume(np.ascontiguousarray(volume.array[slices]), affine, volume.modality,
                  dict(volume.metadata))


def centred_crop(volume, max_side: int):
    """A 2D image's centred crop of at most ``max_side`` a side (volumes and 0: unchanged)."""
    if volume.ndim != 2 or max_side <= 0 or max(volume.shape) <= max_side:
        return volume
    slices = tuple(slice((n - min(n, max_side)) // 2, (n - min(n, max_side)) // 2 + min(n, max_side))
                   for n in volume.shape)
    return crop_volume(volume, slices)


def training_sources(model) -> list[dict]:
    """The training sources (path, region) the model's card lists ([] without a card)."""
    if not getattr(model, "weights_path", None):
        return []
    try:
        _, meta = read_state_dict(model.weights_path)
        card = json.loads(meta.get("card", "{}"))
    except (OSError, ValueError):
        return []
    return [s if isinstance(s, dict) else {"path": s}
            for s in card.get("config", {}).get("data", {}).get("train", [])]


def trained_on(sources: list[dict], ref: str) -> bool:
    """Whether a training source of the same name (and any frame) covers pixels of the
    reference: regions compared as in the training start-up check."""
    name, region = split_region(ref)
    for s in sources:
        theirs = None if s.get("region") is None else tuple(
            None if b is None else tuple(b) for b in s["region"])
        if s["path"] == name and not regions_disjoint(region, theirs):
            return True
    return False


def without_arrays(obj):
    """The report without its private image arrays (keys starting with an underscore)."""
    if isinstance(obj, dict):
        return {k: without_arrays(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [without_arrays(v) for v in obj]
    return obj
