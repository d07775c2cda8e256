"""Install a trained run as a shipped starter model: fp16 safetensors in the package + checksum.

    python scripts/install_starter.py RUN_DIR starter_4_1_2d

Reads RUN_DIR/model.safetensors (written by `medvae train`), checks that its architecture is the
zoo's, stores it in fp16 under medvae_engine/weights/NAME.safetensors with the training model card
in the header, records its sha256 in medvae_engine/weights/checksums.json (read by the zoo) and
reports the PSNR cost of fp16 storage on a held-out real image (2D: MR_small.dcm, 3D: nibabel's
anatomical.nii).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medvae_engine.codec import reconstruct
from medvae_engine.imaging.io import read_volume
from medvae_engine.models import load_model, save_model
from medvae_engine.models.checkpoints import file_sha256, read_state_dict
from medvae_engine.models.zoo import PACKAGE_WEIGHTS, get_spec
from medvae_engine.quality import scored_range, scores
from medvae_engine.training.data import resolve_builtin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    spec = get_spec(args.name)
    trained = load_model(args.run_dir / "model.safetensors")
    if trained.config != spec.config():
        sys.exit(f"error: {args.run_dir}: architecture {trained.config} is not {spec.name}'s {spec.config()}")
    _, meta = read_state_dict(args.run_dir / "model.safetensors")
    card = json.loads(meta.get("card", "{}"))
    target = PACKAGE_WEIGHTS / f"{spec.name}.safetensors"
    save_model(trained, target, card | {"storage": "fp16"}, half=True)
    sums_path = PACKAGE_WEIGHTS / "checksums.json"
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    sums[spec.name] = file_sha256(target)
    sums_path.write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    shipped = load_model(target)  # by path: the zoo read checksums.json before this run wrote it
    # a held-out image of the model's dimensionality (docs/training.md names the held-out set)
    held_out = "pydicom/MR_small.dcm" if spec.spatial_dims == 2 else "nibabel/anatomical"
    volume = read_volume(resolve_builtin(held_out))
    full = scores(volume.array, reconstruct(volume, trained).array, scored_range(volume))
    half = scores(volume.array, reconstruct(volume, shipped).array, scored_range(volume))
    print(json.dumps({"name": spec.name, "path": str(target), "bytes": target.stat().st_size,
                      "sha256": sums[spec.name], "psnr_fp32_db": full["psnr_db"],
                      "psnr_fp16_db": half["psnr_db"],
                      "fp16_cost_db": float(np.round(full["psnr_db"] - half["psnr_db"], 4))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
