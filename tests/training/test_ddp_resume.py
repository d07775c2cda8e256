"""DDP (2 gloo processes, torchrun) equals 1 process at the same global batch; exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from medvae_engine.training.trainer import run_training


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def test_two_process_ddp_equals_one_process(write_config, tmp_path):
    # Adam's epsilon keeps parameters whose true gradient is zero (conv biases before a per-channel
    # GroupNorm) from turning float round-off into full-size steps that differ between the runs.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    optim = {"eps": 1e-4}
    single = write_config({"data": {"batch_size": 4}, "optim": optim,
                           "run": {"output_dir": "single"}}, "single.yaml")
    ddp = write_config({"data": {"batch_size": 2}, "optim": optim, "run": {"output_dir": "ddp"}},
                       "ddp.yaml")
    cli = ["-m", "medvae_engine.cli.train"]
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
    steps = [p.done for p in run_training(parted, stop_at=2)]
    assert steps == [1, 2] and not (tmp_path / "parted" / "model.safetensors").exists()
    assert list(run_training(parted, export_only=True)) == []
    card = json.loads((tmp_path / "parted" / "model_card.json").read_text())
    assert card["steps"] == 2 and "l1" in card["final_losses"]
    resumed = [p.done for p in run_training(parted, resume=True)]
    assert resumed == [3, 4]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "parted")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (tmp_path / "parted" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def merge_out(update: dict, out: str) -> dict:
    return {**update, "run": {**update["run"], "output_dir": out}}


def test_gradient_accumulation_equals_the_larger_batch(write_config, tmp_path):
    optim = {"eps": 1e-4}
    big = write_config({"data": {"batch_size": 4}, "optim": optim, "run": {"output_dir": "big"}},
                       "big.yaml")
    accumulated = write_config({"data": {"batch_size": 2}, "optim": {**optim, "accumulation": 2},
                                "run": {"output_dir": "acc"}}, "acc.yaml")
    list(run_training(big))
    list(run_training(accumulated))
    a, b = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_killed_process_resumes_to_the_same_weights(write_config, tmp_path):
    update = {"run": {"steps": 30, "checkpoint_every": 2, "precision": "bf16"},
              "data": {"crop": [32, 32], "batch_size": 4}}
    full = write_config(merge_out(update, "full"), "full.yaml")
    killed = write_config(merge_out(update, "killed"), "killed.yaml")
    cmd = [sys.executable, "-m", "medvae_engine.cli.train", str(killed)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()  # really killed mid-way
    assert subprocess.run([*cmd, "--resume"], env=env, timeout=120).returncode == 0
    list(run_training(full))
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_exported_weights_are_the_ema_of_the_training_weights(write_config, tmp_path):
    """With optim.ema_decay, the EMA after step 1 and the training weights after steps 2, 3, 4
    (exact resume, one step at a time) averaged here with d_n = min(d, (1+n)/(10+n)) equal the
    exported weights, which are not the last training weights."""
    path = write_config({"optim": {"ema_decay": 0.3},
                         "run": {"steps": 4, "checkpoint_every": 1, "output_dir": "ema"}})
    out = tmp_path / "ema"
    states = []
    for step in range(1, 5):
        list(run_training(path, resume=step > 1, stop_at=step if step < 4 else None))
        states.append(torch.load(out / "checkpoint.pt", weights_only=True))
    average = dict(states[0]["ema"])
    for n, state in enumerate(states[1:], start=2):
        decay = min(0.3, (1 + n) / (10 + n))
        for key, value in state["model"].items():
            if value.is_floating_point():
                average[key] = decay * average[key] + (1 - decay) * value
    last = states[-1]["model"]
    for key, value in _weights(out).items():
        torch.testing.assert_close(value, average[key].to(value.dtype), atol=1e-6, rtol=0)
    assert any(not torch.allclose(v, last[k].to(v.dtype)) for k, v in _weights(out).items())
    card = json.loads((out / "model_card.json").read_text())
    assert "exponential moving average, decay 0.3" in (out / "model_card.md").read_text()
    assert card["config"]["optim"]["ema_decay"] == 0.3
