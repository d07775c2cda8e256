"""Shared helpers: tiny configs on real bundled images, a tiny frozen TorchScript embedder."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

TINY = {
    "stage": "stage1",
    "seed": 3,
    "model": {"init": "scratch", "ch": 32, "ch_mult": [1, 2], "z_channels": 1},
    "data": {
        "train": ["builtin:pydicom/CT_small.dcm",
                  {"path": "builtin:nibabel/example4d", "frame": 0}],
        "val": ["builtin:pydicom/MR_small.dcm"],
        "crop": [16, 16],
        "patch": 16,
        "batch_size": 2,
        "val_crop": 32,
    },
    "loss": {"adversarial": {"start_step": 1000}},
    "optim": {"lr": 1e-3},
    "run": {"steps": 3, "output_dir": "out", "precision": "fp32", "threads": 1,
            "checkpoint_every": 100, "val_every": 100, "log_every": 1},
}


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def write_config(tmp_path):
    """write_config(update, name) -> path of a YAML merging ``update`` into the tiny config."""

    def write(update: dict | None = None, name: str = "train.yaml") -> Path:
        config = merge(TINY, update or {})
        config["run"]["output_dir"] = str(tmp_path / config["run"]["output_dir"])
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


class TinyEmbedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)


@pytest.fixture(scope="session")
def embedder_file(tmp_path_factory) -> Path:
    """A tiny frozen network saved as TorchScript."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("embedder") / "tiny.pt"
    torch.jit.script(TinyEmbedder().eval()).save(str(path))
    return path
