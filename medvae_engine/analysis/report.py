"""The `medvae analyze` pipeline: reference + test images (files or folders) -> a full report.

Output folder: ``metrics.json`` (settings, per-method summaries, paired statistics, FID, AE-ceiling
screening), ``per_image.csv`` (one row per image and method), ``per_slice.csv`` for volumes,
``maps/<case>/<method>_<map>.nii.gz`` in the reference geometry, and ``figures/*.png``.
Intensities are mapped to [0, 1] per case with the reference's (min, max) unless ``--data-range``
or a CT ``--window`` is given; the mapping used is written into metrics.json.
The report is built in a hidden sibling folder and moved into place only when complete.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path

import numpy as np

from .. import CodecOptions, reconstruct
from ..codec.spec import DEFAULT_FACTOR, load_codec
from ..data.files import image_stem, is_image_file
from ..errors import InputError, OutputError
from ..imaging.io import read_volume, write_volume
from ..imaging.volume import Volume
from ..runtime.cli_progress import drive
from ..runtime.progress import Progress, run
from .hallucination import hallucination
from .maps import check_geometry, compute_maps
from .metrics import (
    MsSsimResult,
    Unavailable,
    check_pair,
    mean_finite,
    ms_ssim,
    psnr,
    reference_range,
    region_mask,
    slicewise,
    ssim,
    to_unit_range,
)
from .perceptual import fid, load_feature_extractor, load_lpips, lpips_distance
from .spectrum import radial_spectrum, radial_spectrum_slices
from .stats import paired_comparison
from .wavelets import SUBBANDS_2D, subband_psnr, subband_psnr_slices

AE_NAME = "ae"


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `medvae analyze` (the lead wires the subcommand to `run_analyze`)."""
    parser.add_argument("--reference", required=True, help="HR image file or folder of images")
    parser.add_argument("--test", action="append", required=True, metavar="NAME=PATH",
                        help="a method's output file or folder (matched to the references by "
                             "file name); repeat for several methods")
    parser.add_argument("--ae", metavar="MODEL|NAME=PATH",
                        help="autoencoder for the hallucination noise floor: a model name or "
                             "checkpoint to reconstruct the references with, a baseline such as "
                             "bicubic@F, or NAME=PATH of precomputed AE reconstructions")
    parser.add_argument("--screen", action="append", default=[], metavar="MODEL",
                        help="AE-ceiling screening: encode-decode the references with this "
                             "candidate and rank by PSNR (repeatable)")
    parser.add_argument("-o", "--output", required=True, help="report folder (must be new/empty)")
    parser.add_argument("--k", type=float, default=2.0, help="noise-floor k in tau = mean + k*std")
    parser.add_argument("--data-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="intensities mapped to [0, 1] (default: each reference's min, max)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                        help="CT window used as data range, e.g. -1000 1000")
    parser.add_argument("--axis", type=int, default=2, help="slice axis of volumes (default 2)")
    parser.add_argument("--mask", help="mask file or folder (non-zero = region of interest)")
    parser.add_argument("--box", action="append", default=[], metavar="A0:A1,B0:B1[,C0:C1]",
                        help="voxel box restricting region metrics (repeatable; unioned)")
    parser.add_argument("--resample", action="store_true",
                        help="resample tests whose grid differs from the reference's")
    parser.add_argument("--lpips-backbone", help="torchvision AlexNet weights file")
    parser.add_argument("--lpips-heads", help="LPIPS v0.1 alex.pth lin heads")
    parser.add_argument("--fid-extractor", help="TorchScript feature extractor (Inception) for FID")
    parser.add_argument("--no-maps", action="store_true", help="skip the NIfTI maps")
    parser.add_argument("--modality", default="auto", choices=["auto", "ct", "mri", "xray"])
    parser.add_argument("--device", default="cpu")


def run_analyze(args: argparse.Namespace) -> int:
    """Run the whole report for parsed `add_analyze_arguments` flags; returns the exit code 0."""
    tests = dict(_name_path(spec, "--test") for spec in args.test)
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputError(f"{output}: exists and is not an empty folder")
    value_range = tuple(args.window or args.data_range or ()) or None
    if value_range and not value_range[1] > value_range[0]:
        flag = "--window" if args.window else "--data-range"
        raise InputError(f"{flag} LO HI needs HI > LO, got LO={value_range[0]:g} HI={value_range[1]:g}")
    settings = {
        "k": args.k, "axis": args.axis, "value_range": value_range,
        "value_range_rule": ("given" if value_range else "reference min/max per image")
        + ", mapped to [0, 1] and clipped; data range 1",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        build_report(
            Path(args.reference), tests, work, ae=args.ae, screen=args.screen, k=args.k,
            value_range=value_range, axis=args.axis, mask=args.mask,
            boxes=[parse_box(b) for b in args.box], resample=args.resample,
            lpips_backbone=args.lpips_backbone, lpips_heads=args.lpips_heads,
            fid_extractor=args.fid_extractor, write_maps=not args.no_maps,
            modality=args.modality, device=args.device, settings=settings,
        )
        if output.exists():
            output.rmdir()
        os.replace(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _name_path(spec: str, flag: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise InputError(f"{flag} {spec!r}: expected NAME=PATH")
    return name, Path(path)


def parse_box(text: str) -> list[tuple[int, int]]:
    """'10:50,20:60' -> [(10, 50), (20, 60)] (voxel index ranges, stop exclusive)."""
    try:
        return [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--box {text!r}: expected A0:A1,B0:B1[,C0:C1]") from None


def list_cases(folder: Path) -> dict[str, Path]:
    """Images in ``folder`` by case key: files with an image suffix, and sub-folders (DICOM
    series)."""
    cases = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or is_image_file(p):
            cases[image_stem(p)] = p
    if not cases:
        raise InputError(f"{folder}: no images found")
    return cases


def match_inputs(reference: Path, others: dict[str, Path]) -> list[tuple[str, Path, dict]]:
    """[(case, reference file, {name: file})]: files as given, or folders matched by file name."""
    if not reference.exists():
        raise InputError(f"{reference}: no such file or folder")
    if reference.is_file() or is_dicom_series(reference):
        for name, p in others.items():
            if not p.exists():
                raise InputError(f"{p}: no such file ({name})")
        return [(image_stem(reference), reference, dict(others))]
    refs = list_cases(reference)
    listed = {}
    for name, folder in others.items():
        if not folder.is_dir():
            raise InputError(f"{folder}: {name} must be a folder when --reference is a folder")
        listed[name] = list_cases(folder)
    out = []
    for key, ref in refs.items():
        found = {}
        for name, files in listed.items():
            if key not in files:
                raise InputError(f"{others[name]}: no file matching {ref.name} ({name})")
            found[name] = files[key]
        out.append((key, ref, found))
    return out


def is_dicom_series(folder: Path) -> bool:
    """A folder of files without image suffixes (IM0001, ...) is one DICOM series, not cases."""
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return bool(files) and all(
        p.is_file() and not is_image_file(p) for p in files)


def _read(path: Path, modality: str) -> Volume:
    volume = read_volume(path, modality=modality)
    array = np.asarray(volume.array, np.float64)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{path}: contains NaN or Inf values")
    return volume


def resolve_model(spec: str, device: str = "cpu", spatial_dims: int = 2):
    """A codec from its spec ('bicubic@8', a zoo name, a checkpoint path; a bare 'bicubic' is f=4)."""
    return load_codec(spec, spatial_dims=spatial_dims, default_factor=DEFAULT_FACTOR, device=device)


def model_label(spec: str) -> str:
    """Short label for a model given by name ('bicubic:4') or checkpoint path (its file stem)."""
    path = Path(spec)
    return path.name.split(".")[0] if path.suffix else spec


def reconstruct_with(volume: Volume, model, axis: int | None = None) -> Volume:
    """The model's encode-decode reconstruction of ``volume`` in its geometry and units (2D
    models run slice by slice along ``axis`` on volumes)."""

    return reconstruct(volume, model, CodecOptions(axis=axis))


def image_metrics(
    ref01: np.ndarray,
    test01: np.ndarray,
    *,
    axis: int,
    region: np.ndarray | None,
    lpips_model,
) -> dict:
    """Scalar metrics of one [0, 1] image or volume against its reference (volumes: slice means
    plus whole-volume PSNR/SSIM/MS-SSIM)."""
    row: dict = {}
    if ref01.ndim == 2:
        row["psnr"] = psnr(ref01, test01)
        row["ssim"] = ssim(ref01, test01)
        row["ms_ssim"], row["ms_ssim_note"] = _ms(ms_ssim(ref01, test01))
        row.update({f"psnr_{k}": v for k, v in subband_psnr(ref01, test01).items()})
        row["spectrum"] = radial_spectrum(test01).tolist()
        slices_ref, slices_test = ref01[None], test01[None]
    else:
        row["psnr"] = mean_finite(slicewise(psnr, ref01, test01, axis))
        row["ssim"] = float(np.mean(slicewise(ssim, ref01, test01, axis)))
        row["psnr_volume"] = psnr(ref01, test01)
        row["ssim_volume"] = ssim(ref01, test01)
        row["ms_ssim"], row["ms_ssim_note"] = _ms(ms_ssim(ref01, test01))
        bands = subband_psnr_slices(ref01, test01, axis)
        row.update({f"psnr_{k}": mean_finite(v) for k, v in bands.items()})
        row["spectrum"] = np.nanmean(radial_spectrum_slices(test01, axis), axis=0).tolist()
        slices_ref, slices_test = np.moveaxis(ref01, axis, 0), np.moveaxis(test01, axis, 0)
    lp = lpips_distance(slices_ref, slices_test, lpips_model)
    row["lpips"] = lp if not isinstance(lp, Unavailable) else None
    row["lpips_note"] = lp.reason if isinstance(lp, Unavailable) else ""
    if region is not None:
        row["psnr_region"] = psnr(ref01, test01, region=region)
        row["ssim_region"] = ssim(ref01, test01, region=region)
        if (~region).any():
            row["psnr_background"] = psnr(ref01, test01, region=~region)
            row["ssim_background"] = ssim(ref01, test01, region=~region)
    return row


def _ms(result: MsSsimResult | Unavailable) -> tuple[float | None, str]:
    if isinstance(result, Unavailable):
        return None, result.reason
    return result.value, result.note


def _case_region(ref: Volume, mask_path: Path | None, boxes):
    mask = None
    if mask_path is not None:
        mask = np.asarray(_read(mask_path, "auto").array) != 0
    return region_mask(ref.shape, mask, boxes)


def build_report(reference: Path, tests: dict[str, Path], out: Path, *, progress: bool = True,
                 **options) -> dict:
    """Compute everything and write the report files into ``out`` (see `build_report_steps` for
    the options); returns the metrics dict. ``progress``: the CLI progress bar, one unit an image."""
    steps = build_report_steps(reference, tests, out, **options)
    return drive(steps, "analyze", unit="image") if progress else run(steps)


def build_report_steps(
    reference: Path,
    tests: dict[str, Path],
    out: Path,
    *,
    ae: str | None = None,
    screen: list[str] = (),
    k: float = 2.0,
    value_range: tuple[float, float] | None = None,
    axis: int = 2,
    mask: str | None = None,
    boxes: list | None = None,
    resample: bool = False,
    lpips_backbone: str | None = None,
    lpips_heads: str | None = None,
    fid_extractor: str | None = None,
    write_maps: bool = True,
    modality: str = "auto",
    device: str = "cpu",
    settings: dict | None = None,
) -> Generator[Progress, None, dict]:
    """Compute everything and write the report files into ``out``, yielding Progress per image;
    returns the metrics dict."""
    others = dict(tests)
    ae_model = None
    if ae:
        if "=" in ae:
            ae_name, ae_path = _name_path(ae, "--ae")
            others[f"{AE_NAME}:{ae_name}"] = ae_path
        else:
            ae_model = resolve_model(ae, device)
    if mask:
        others["__mask__"] = Path(mask)
    cases = match_inputs(reference, others)
    lpips_model = load_lpips(lpips_backbone, lpips_heads)
    extractor = load_feature_extractor(fid_extractor)
    keep_for_fid = not isinstance(extractor, Unavailable)
    screen_models = {model_label(name): resolve_model(name, device) for name in screen}
    rows, slice_rows, spectra_ref, fid_sets = [], [], [], {}
    example = None
    for done, (key, ref_path, files) in enumerate(cases, start=1):
        ref = _read(ref_path, modality)
        mask_path = files.pop("__mask__", None)
        region = _case_region(ref, mask_path, boxes)
        vols = {name: check_geometry(ref, _read(p, modality), str(p), resample=resample)
                for name, p in files.items()}
        ae_key = next((n for n in vols if n.startswith(f"{AE_NAME}:")), None)
        if ae_model is not None:
            ae_key = f"{AE_NAME}:{model_label(ae)}"
            vols[ae_key] = reconstruct_with(ref, ae_model, axis)
        vr = value_range or reference_range(ref.array)
        ref01 = to_unit_range(ref.array, vr)
        spectra_ref.append(radial_spectrum(ref01) if ref01.ndim == 2 else
                           np.nanmean(radial_spectrum_slices(ref01, axis), axis=0))
        ae01 = to_unit_range(vols[ae_key].array, vr) if ae_key else None
        if keep_for_fid:
            fid_sets.setdefault("reference", []).extend(_slices(ref01, axis))
        if example is None:
            example = {"case": key, "ref": _middle(ref01, axis), "tests": {}, "labels": {}}
        for name, vol in vols.items():
            check_pair(ref.array, vol.array, (str(ref_path), name))
            t01 = to_unit_range(vol.array, vr)
            row = {"case": key, "method": name, "value_lo": vr[0], "value_hi": vr[1],
                   **image_metrics(ref01, t01, axis=axis, region=region, lpips_model=lpips_model)}
            if ae01 is not None:
                h = hallucination(ref01, t01, ae01, k, region)
                row.update({k_: v for k_, v in h.scalars().items() if k_ != "k"})
            rows.append(row)
            if keep_for_fid:
                fid_sets.setdefault(name, []).extend(_slices(t01, axis))
            if ref01.ndim == 3:
                for i, value in enumerate(slicewise(psnr, ref01, t01, axis)):
                    slice_rows.append({"case": key, "method": name, "slice": i, "psnr": value})
            if write_maps:
                maps = compute_maps(ref, vol, vols[ae_key] if ae_key else None, k=k,
                                    value_range=vr, axis=axis)
                _write_maps(out / "maps" / key, name, maps)
            if example["case"] == key:
                example["tests"][name] = _middle(t01, axis)
                if ae01 is not None:
                    example["labels"][name] = _middle(h.labels, axis)
        yield Progress(done, len(cases), "analyze", info={"image": key})
    fid_values = {name: _jsonable(fid(fid_sets["reference"], fid_sets[name], extractor)
                                  if keep_for_fid else extractor)
                  for name in dict.fromkeys(r["method"] for r in rows)}
    screening = screen_autoencoders(
        [_read(p, modality) for _, p, _ in cases], screen_models, value_range, axis
    ) if screen else []
    metrics = {
        "settings": settings or {"k": k, "axis": axis, "value_range": value_range},
        "lpips": ("available" if not isinstance(lpips_model, Unavailable)
                  else lpips_model.to_json()),
        "methods": summarise(rows),
        "comparisons": compare_methods(rows),
        "fid": fid_values,
        "ae_ceiling": screening,
        "reference_spectrum": np.nanmean(spectra_ref, axis=0).tolist(),
        "cases": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2, allow_nan=True))
    _write_csv(out / "per_image.csv", [{k_: v for k_, v in r.items() if k_ != "spectrum"}
                                       for r in rows])
    if slice_rows:
        _write_csv(out / "per_slice.csv", slice_rows)
    write_figures(out / "figures", metrics, example)
    return metrics


def _slices(array01: np.ndarray, axis: int) -> list[np.ndarray]:
    return [array01] if array01.ndim == 2 else list(np.moveaxis(array01, axis, 0))


def _middle(array: np.ndarray, axis: int) -> np.ndarray:
    return array if array.ndim == 2 else np.take(array, array.shape[axis] // 2, axis=axis)


def _write_maps(folder: Path, method: str, maps: dict[str, Volume]) -> None:
    safe = method.replace(":", "_").replace("/", "_")
    for kind, volume in maps.items():
        dtype = "uint8" if kind == "hallucination" else None
        write_volume(volume, folder / f"{safe}_{kind}.nii.gz", dtype=dtype)


def screen_autoencoders(
    references: list[Volume],
    models: dict,
    value_range: tuple[float, float] | None = None,
    axis: int | None = None,
) -> list[dict]:
    """AE ceiling: mean encode-decode PSNR of each candidate on the references, best first.

    The reconstruction PSNR of an autoencoder bounds what latent super-resolution in its space
    can reach, so this cheap ranking predicts which latent space to train SR in.
    """
    ranking = []
    for name, model in models.items():
        values = []
        for ref in references:
            vr = value_range or reference_range(ref.array)
            rec = reconstruct_with(ref, model, axis)
            values.append(psnr(to_unit_range(ref.array, vr), to_unit_range(rec.array, vr)))
        ranking.append({"model": name, "psnr_mean": mean_finite(values), "psnr": values})
    ranking.sort(key=lambda r: -r["psnr_mean"] if not math.isnan(r["psnr_mean"]) else math.inf)
    for rank, r in enumerate(ranking, 1):
        r["rank"] = rank
    return ranking


SUMMARY_KEYS = ("psnr", "ssim", "ms_ssim", "lpips", "psnr_volume", "ssim_volume",
                "psnr_region", "ssim_region", "psnr_background", "ssim_background",
                "hallucination_rate", "loss_rate", "hallucination_magnitude", "loss_magnitude",
                "tau") + tuple(f"psnr_{s}" for s in SUBBANDS_2D)


def summarise(rows: list[dict]) -> dict:
    """Per method: mean and sd (over images) of each scalar, and the mean spectrum."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        summary = {"n_images": len(mine)}
        for key in SUMMARY_KEYS:
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                arr = np.asarray(values, np.float64)
                finite = arr[np.isfinite(arr)]
                summary[key] = {"mean": mean_finite(values),
                                "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0}
        summary["spectrum"] = np.nanmean([r["spectrum"] for r in mine], axis=0).tolist()
        out[method] = summary
    return out


def compare_methods(rows: list[dict], key: str = "psnr") -> dict:
    """Paired statistics of per-image ``key`` for every pair of methods (needs >= 2 images)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {m: {r["case"]: r[key] for r in rows if r["method"] == m} for m in methods}
    out = {}
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            cases = [c for c in by[a] if c in by[b]]
            va = [by[a][c] for c in cases]
            vb = [by[b][c] for c in cases]
            label = f"{a} vs {b} ({key})"
            if len(cases) < 2 or not np.all(np.isfinite(va + vb)):
                out[label] = {"available": False,
                              "reason": "needs >= 2 images with finite values"}
            else:
                out[label] = paired_comparison(va, vb)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value):
    """Unavailable -> {'available': False, 'reason'}; numpy -> Python; inf stays inf
    (written as JSON ``Infinity``)."""
    if isinstance(value, Unavailable):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_figures(folder: Path, metrics: dict, example: dict | None) -> list[Path]:
    """The report's PNG figures (matplotlib Figure objects; the caller's backend is left alone):
    subband bars, spectra, hallucination rates, example overlays and, with LPIPS, the
    perception-distortion plane."""
    from matplotlib.figure import Figure  # lazy: matplotlib takes about half a second to import

    folder.mkdir(parents=True, exist_ok=True)
    methods = metrics["methods"]
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        written.append(folder / name)

    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(SUBBANDS_2D))
    for i, (name, summary) in enumerate(methods.items()):
        stats = [summary.get(f"psnr_{b}", {"mean": np.nan, "sd": 0.0}) for b in SUBBANDS_2D]
        means = [s["mean"] if np.isfinite(s["mean"]) else np.nan for s in stats]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width,
               yerr=[s["sd"] for s in stats], capsize=2, label=name)
    ax.set_xticks(x, SUBBANDS_2D)
    ax.set_xlabel("Haar subband (level 1 = finest)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("Wavelet subband PSNR (mean \u00b1 SD over images)")
    ax.legend()
    save(fig, "subband_psnr.png")

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.arange(1, len(metrics["reference_spectrum"]) + 1)
    ax.plot(bins, metrics["reference_spectrum"], "k-", lw=2, label="reference (HR)")
    for name, summary in methods.items():
        ax.plot(bins, summary["spectrum"], marker="o", ms=3, label=name)
    ax.set_xlabel("Radial frequency bin (0 to the corner frequency, low \u2192 high)")
    ax.set_ylabel("Mean log$_{10}$ power")
    ax.set_title("Radial power spectrum")
    ax.legend()
    save(fig, "spectrum.png")

    rated = {n: s for n, s in methods.items() if "hallucination_rate" in s}
    if rated:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        x = np.arange(len(rated))
        for j, (key, label) in enumerate((("hallucination_rate", "hallucinated (D > \u03c4)"),
                                          ("loss_rate", "lost (D < -\u03c4)"))):
            ax.bar(x + (j - 0.5) * 0.4, [100 * s[key]["mean"] for s in rated.values()], 0.4,
                   yerr=[100 * s[key]["sd"] for s in rated.values()], capsize=3, label=label)
        ax.set_xticks(x, list(rated), rotation=20)
        ax.set_ylabel("Pixels (%)")
        ax.set_title(f"Hallucination and loss rates (k = {metrics['settings'].get('k')})")
        ax.legend()
        save(fig, "hallucination_rates.png")

    with_lpips = {n: s for n, s in methods.items() if "lpips" in s}
    if with_lpips:
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        for name, s in with_lpips.items():
            ax.errorbar(s["lpips"]["mean"], s["psnr"]["mean"], xerr=s["lpips"]["sd"],
                        yerr=s["psnr"]["sd"], fmt="o", capsize=3, label=name)
        ax.set_xlabel("LPIPS (AlexNet) \u2193")
        ax.set_ylabel("PSNR (dB) \u2191")
        ax.set_title("Perception-distortion plane")
        ax.legend()
        save(fig, "perception_distortion.png")

    if example:
        tests = example["tests"]
        rows = 3 if example["labels"] else 2
        fig = Figure(figsize=(3 * (len(tests) + 1), 3 * rows))
        axes = fig.subplots(rows, len(tests) + 1, squeeze=False)
        axes[0, 0].imshow(example["ref"], cmap="gray", vmin=0, vmax=1)
        axes[0, 0].set_title(f"reference ({example['case']})")
        for a in axes[1:, 0]:
            a.axis("off")
        for j, (name, img) in enumerate(tests.items(), 1):
            axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[0, j].set_title(name)
            error = np.abs(img - example["ref"])
            shown = axes[1, j].imshow(error, cmap="inferno", vmin=0,
                                      vmax=max(float(np.percentile(error, 99.5)), 1e-6))
            axes[1, j].set_title("absolute error", fontsize=9)
            fig.colorbar(shown, ax=axes[1, j], fraction=0.046, label="|test - HR| ([0, 1])")
            labels = example["labels"].get(name)
            if labels is not None:
                overlay = np.zeros(labels.shape + (4,))
                overlay[labels == 1] = (1, 0, 0, 0.9)
                overlay[labels == 2] = (0, 0.4, 1, 0.9)
                axes[2, j].imshow(example["ref"], cmap="gray", vmin=0, vmax=1)
                axes[2, j].imshow(overlay)
                axes[2, j].set_title("red: hallucinated, blue: lost", fontsize=9)
        for a in axes.ravel():
            a.set_xticks([])
            a.set_yticks([])
        save(fig, "example_overlay.png")
    return written
