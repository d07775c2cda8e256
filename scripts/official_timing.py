"""Time the OFFICIAL MedVAE implementation for ``medvae bench speed`` (run as a script).

Runs under an interpreter where the official ``medvae`` package is installed (not this project):
``python scripts/official_timing.py '<json case>'``. It imports only torch and the official model modules,
loads the same checkpoint and input as our worker and prints one JSON line of timings; outputs go
to the .npz path the case names so the parent can compare them with ours.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
import types

import numpy as np
import torch


def official_classes():
    """Official 2D/3D AutoencoderKL without running medvae/__init__.py (it pulls heavy extras)."""
    spec = importlib.util.find_spec("medvae")
    if spec is None:
        raise SystemExit("the official 'medvae' package is not installed in this interpreter")
    package = types.ModuleType("medvae")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["medvae"] = package
    from medvae.models.autoencoder_kl import AutoencoderKL as AE2D
    from medvae.models.autoencoder_kl_3d import AutoencoderKL as AE3D

    return AE2D, AE3D


def main(case: dict) -> dict:
    torch.set_num_threads(case["threads"])
    ae2d, ae3d = official_classes()
    cfg = case["config"]
    ddconfig = {
        "double_z": True,
        "z_channels": cfg["z_channels"],
        "resolution": 256,
        "in_channels": cfg["in_channels"],
        "out_ch": cfg["out_channels"],
        "ch": cfg["ch"],
        "ch_mult": cfg["ch_mult"],
        "num_res_blocks": cfg["num_res_blocks"],
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    cls = ae2d if cfg["spatial_dims"] == 2 else ae3d
    model = cls(ddconfig=ddconfig, embed_dim=cfg["z_channels"])
    model.load_state_dict(torch.load(case["weights"], weights_only=True)["state_dict"], strict=True)
    model.eval()
    x = torch.from_numpy(np.load(case["input"]))
    dtype = {"fp32": None, "bf16": torch.bfloat16}[case["precision"]]
    ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.no_grad()
    best = {}
    with torch.no_grad(), ctx:
        if case.get("warmup"):
            model.decode(model.encode(x).mode())
        for _ in range(max(1, case.get("repeat", 1))):  # the fastest run counts, as for ours
            w0, c0 = time.perf_counter(), time.process_time()
            z = model.encode(x).mode()
            w1 = time.perf_counter()
            y = model.decode(z)
            w2, c2 = time.perf_counter(), time.process_time()
            if not best or w2 - w0 < best["encode_s"] + best["decode_s"]:
                best = {"encode_s": w1 - w0, "decode_s": w2 - w1, "cpu_s": c2 - c0}
    np.savez(case["outputs"], z=z.float().numpy(), y=y.float().numpy())
    return best | {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
