"""Install a trained run as a shipped starter model: fp16 safetensors in the package + checksum.

    python scripts/install_starter.py RUN_DIR starter_4_1_2d
    python scripts/install_starter.py RUN_DIR starter_sr_x4

Reads RUN_DIR/model.safetensors (written by `medvae train`; for an SR model RUN_DIR/sr_model.safetensors
from `medvae train-sr`), checks it is what the zoo names, stores it in fp16 under
medvae_engine/weights/ with the training model card in the header, records its sha256 in
medvae_engine/weights/checksums.json (read by the zoo) and reports the PSNR cost of fp16 storage on
a held-out real image (2D: MR_small.dcm, 3D: nibabel's anatomical.nii; SR: x4 SR of MR_small).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medvae_engine.benchmarks.quality import scored_range, scores
from medvae_engine.benchmarks.sr import degrade_in_model_space
from medvae_engine.codec.pipeline import reconstruct
from medvae_engine.data.sources import resolve_builtin
from medvae_engine.imaging.io import read_volume
from medvae_engine.models import load_model, save_model
from medvae_engine.models.checkpoints import file_sha256, read_state_dict
from medvae_engine.models.zoo import PACKAGE_WEIGHTS, SR_MODELS, get_spec
from medvae_engine.runtime.progress import run
from medvae_engine.sr.pipeline import SROptions, super_resolve_steps
from medvae_engine.sr.unet import load_sr_model, save_sr_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    if args.name in SR_MODELS:
        target, full, half = install_sr(args.run_dir, SR_MODELS[args.name])
    else:
        target, full, half = install_autoencoder(args.run_dir, get_spec(args.name))
    sha = record_checksum(args.name, target)
    print(json.dumps({"name": args.name, "path": str(target), "bytes": target.stat().st_size,
                      "sha256": sha, "psnr_fp32_db": full, "psnr_fp16_db": half,
                      "fp16_cost_db": float(np.round(full - half, 4))}))
    return 0


def install_autoencoder(run_dir: Path, spec) -> tuple[Path, float, float]:
    """fp16 copy of RUN_DIR/model.safetensors; PSNR of fp32 and fp16 weights on a held-out image."""
    trained = load_model(run_dir / "model.safetensors")
    if trained.config != spec.config():
        sys.exit(f"error: {run_dir}: architecture {trained.config} is not {spec.name}'s {spec.config()}")
    _, meta = read_state_dict(run_dir / "model.safetensors")
    card = json.loads(meta.get("card", "{}"))
    target = PACKAGE_WEIGHTS / f"{spec.name}.safetensors"
    save_model(trained, target, card | {"name": spec.name, "run": card.get("name"),
                                        "storage": "fp16"}, half=True)
    shipped = load_model(target)  # by path: the zoo read checksums.json before this run wrote it
    # a held-out image of the model's dimensionality (docs/training.md names the held-out set)
    held_out = "pydicom/MR_small.dcm" if spec.spatial_dims == 2 else "nibabel/anatomical"
    volume = read_volume(resolve_builtin(held_out))
    full = scores(volume.array, reconstruct(volume, trained).array, scored_range(volume))
    half = scores(volume.array, reconstruct(volume, shipped).array, scored_range(volume))
    return target, full["psnr_db"], half["psnr_db"]


def install_sr(run_dir: Path, spec) -> tuple[Path, float, float]:
    """fp16 copy of RUN_DIR/sr_model.safetensors; PSNR of DDIM-50 x4 SR of the held-out MR_small
    (bicubic-degraded) with fp32 and fp16 weights, same seed."""
    trained = load_sr_model(run_dir / "sr_model.safetensors")
    if trained.card.get("autoencoder") != spec.autoencoder:
        sys.exit(f"error: {run_dir}: trained on {trained.card.get('autoencoder')}, "
                 f"{spec.name} is for {spec.autoencoder}")
    target = spec.local_path()
    save_sr_model(trained, target, trained.card | {"storage": "fp16"}, half=True)
    shipped = load_sr_model(target)
    hr = read_volume(resolve_builtin("pydicom/MR_small.dcm"))
    lr, hr, norm, _ = degrade_in_model_space(hr, {"kind": "bicubic", "scale": spec.scale})
    autoencoder = load_model(spec.autoencoder)
    out = [run(super_resolve_steps(lr, autoencoder, m, SROptions(steps=50), normalization=norm))
           for m in (trained, shipped)]
    full, half = (scores(hr.array, o.array, scored_range(hr))["psnr_db"] for o in out)
    return target, full, half


def record_checksum(name: str, target: Path) -> str:
    """Write the file's sha256 into weights/checksums.json (read by the zoo)."""
    sums_path = PACKAGE_WEIGHTS / "checksums.json"
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    sums[name] = file_sha256(target)
    sums_path.write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums[name]


if __name__ == "__main__":
    sys.exit(main())
