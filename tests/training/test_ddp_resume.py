"""DDP (2 gloo processes via torchrun) matches 1 process at the same global batch; resume is exact."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from medvae_engine.training.trainer import run_training


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def test_two_process_ddp_equals_one_process(write_config, tmp_path):
    # Adam's epsilon keeps parameters whose true gradient is zero (conv biases before a per-channel
    # GroupNorm) from turning float round-off into full-size steps that differ between the runs.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = write_config({"data": {"batch_size": 4}, "optim": {"eps": 1e-4}, "run": {"output_dir": "single"}}, "single.yaml")
    ddp = write_config({"data": {"batch_size": 2}, "optim": {"eps": 1e-4}, "run": {"output_dir": "ddp"}}, "ddp.yaml")
    cli = ["-m", "medvae_engine.training.cli_train"]
    subprocess.run([sys.executable, *cli, str(single)], check=True, env=env, timeout=120)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         "29533", *cli, str(ddp)], check=True, env=env, timeout=120)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    changed = 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
        changed += 1
    assert changed == len(b)
    card = (tmp_path / "ddp" / "model_card.json").read_text()
    assert '"processes": 2' in card and '"global_batch": 4' in card


def test_stopped_and_resumed_run_equals_uninterrupted(write_config, tmp_path):
    update = {"run": {"steps": 4, "checkpoint_every": 2, "precision": "bf16"},
              "loss": {"adversarial": {"start_step": 1, "layers": 2}},
              "data": {"crop": [16, 24]}}
    full = write_config(merge_out(update, "full"), "full.yaml")
    parted = write_config(merge_out(update, "parted"), "parted.yaml")
    list(run_training(full))
    steps = [p["step"] for p in run_training(parted, stop_at=2)]
    assert steps == [1, 2] and not (tmp_path / "parted" / "model.safetensors").exists()
    resumed = [p["step"] for p in run_training(parted, resume=True)]
    assert resumed == [3, 4]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "parted")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (tmp_path / "parted" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def merge_out(update: dict, out: str) -> dict:
    return {**update, "run": {**update["run"], "output_dir": out}}
