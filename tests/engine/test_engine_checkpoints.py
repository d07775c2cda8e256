"""Checkpoints as training frameworks write them: extra tensors ignored, pickles refused, convert."""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from pydicom.data import get_testdata_file

from medvae_engine.cli import main
from medvae_engine.errors import ModelError
from medvae_engine.imaging.io import read_volume
from medvae_engine.models import load_model
from medvae_engine.models.checkpoints import read_state_dict


def real_slice() -> torch.Tensor:
    """pydicom's real MR slice in [-1, 1] as a (1, 1, 64, 64) batch."""
    a = read_volume(get_testdata_file("MR_small.dcm")).array.astype(np.float32)
    a = (a - a.min()) / (a.max() - a.min()) * 2 - 1
    return torch.from_numpy(a.reshape(1, 1, *a.shape[-2:]))


def loss_tensors() -> dict[str, torch.Tensor]:
    """What an LPIPS + PatchGAN loss module adds to a Lightning model's state dict."""
    g = torch.Generator().manual_seed(5)
    return {
        "loss.logvar": torch.zeros(()),
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(64, 3, 3, 3, generator=g),
        "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 64, 1, 1, generator=g),
        "loss.discriminator.main.0.weight": torch.randn(64, 1, 4, 4, generator=g),
        "loss.discriminator.main.2.running_mean": torch.zeros(128),
    }


def ema_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LitEma buffers: the decay, an update counter and a shadow copy under dot-free names."""
    shadow = {
        f"model_ema.{k.replace('.', '')}": v.clone() + 0.5 for k, v in model.state_dict().items()
    }
    counters = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(40)}
    return counters | shadow


def lightning_checkpoint(model: torch.nn.Module, path: Path, **extra) -> Path:
    """A PyTorch Lightning-style file; the optimizer state is plain dicts of tensors."""
    params = dict(model.named_parameters())
    optimizer_state = {
        "state": {
            i: {"step": torch.tensor(40.0), "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p)}
            for i, p in enumerate(params.values())
        },
        "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "eps": 1e-8, "weight_decay": 0.0,
                          "params": list(range(len(params)))}],
    }
    torch.save(
        {
            "epoch": 3,
            "global_step": 40,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": model.state_dict() | loss_tensors() | ema_tensors(model),
            "optimizer_states": [optimizer_state, {"state": {}, "param_groups": []}],
            "lr_schedulers": [{"base_lrs": [4.5e-6], "last_epoch": 3, "_step_count": 4}],
            "callbacks": {"ModelCheckpoint{'monitor': 'val/rec_loss'}": {
                "best_model_score": torch.tensor(0.12), "best_model_path": "epoch=3.ckpt"}},
            **extra,
        },
        path,
    )
    return path


def test_lightning_checkpoint_loads_the_autoencoder_and_names_what_it_ignores(tmp_path, caplog):
    model = tiny_model(z_channels=3, seed=11)
    path = lightning_checkpoint(model, tmp_path / "last.ckpt")
    torch.load(path, weights_only=True)  # the file is loadable without pickled objects
    with caplog.at_level(logging.INFO, logger="medvae_engine"):
        loaded = load_model(path)
    x = real_slice()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)))
    lines = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1
    assert "last.ckpt" in lines[0] and "loss.*" in lines[0] and "model_ema.*" in lines[0]
    n_ignored = len(loss_tensors()) + len(ema_tensors(model))
    assert f"{n_ignored} tensors" in lines[0]


@pytest.mark.parametrize("damage", ["missing", "misshaped"])
def test_lightning_checkpoint_still_refuses_missing_or_misshaped_model_tensors(tmp_path, damage):
    model = tiny_model(seed=2)
    sd = model.state_dict()
    if damage == "missing":
        del sd["decoder.up.1.block.0.conv2.bias"]
    else:
        sd["decoder.up.1.block.0.conv2.bias"] = torch.zeros(7)

    class Holder(torch.nn.Module):
        def state_dict(self):  # noqa: D102 - hands the damaged dict to lightning_checkpoint
            return sd

        def named_parameters(self):  # noqa: D102
            return model.named_parameters()

    path = lightning_checkpoint(Holder(), tmp_path / "damaged.ckpt")
    with pytest.raises(ModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "damaged.ckpt" in message and "decoder.up.1.block.0.conv2.bias" in message
    assert ("missing keys (1)" if damage == "missing" else "shape mismatches") in message
    assert "loss." not in message and "model_ema" not in message and "\n" not in message


class Marker:
    """Unpickling this object would create a file: proof of code running from a checkpoint."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return pathlib.Path.touch, (self.target,)


def test_pickled_objects_are_named_and_never_run_without_the_opt_in(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    model = tiny_model(seed=4)
    path = lightning_checkpoint(
        model, tmp_path / "pickled.ckpt",
        hyper_parameters=argparse.Namespace(lr=4.5e-6), hook=Marker(marker),
    )
    with pytest.raises(ModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "pickled.ckpt" in message and "argparse.Namespace" in message
    assert "pathlib.Path" in message and "builtins.getattr" in message  # Path.touch, pickled
    assert "--trust-checkpoint" in message and "\n" not in message
    assert not marker.exists()

    out = tmp_path / "recon.nii.gz"
    src = get_testdata_file("MR_small.dcm")
    assert main(["reconstruct", src, "-m", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--trust-checkpoint" in err[0]
    assert not marker.exists() and not out.exists()

    assert main(["reconstruct", src, "-m", str(path), "-o", str(out), "--trust-checkpoint"]) == 0
    assert marker.exists() and out.is_file()  # the explicit opt-in really runs the file's code


def test_convert_writes_safetensors_once_that_load_by_path(tmp_path, capsys):
    model = tiny_model(z_channels=3, seed=9)
    source = lightning_checkpoint(model, tmp_path / "epoch=3.ckpt")
    target = tmp_path / "model.safetensors"
    assert main(["convert", str(source), "-o", str(target)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    tensors, meta = read_state_dict(target)
    assert set(tensors) == set(model.state_dict())
    assert json.loads(meta["config"]) == model.config
    assert json.loads(meta["card"])["converted_from"] == "epoch=3.ckpt"
    x = real_slice()
    with torch.no_grad():
        assert torch.equal(load_model(target).decode(load_model(target).encode(x)),
                           model.decode(model.encode(x)))
    assert main(["convert", str(source), "-o", str(target)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_convert_refuses_pickles_unless_trusted(tmp_path, capsys):
    model = tiny_model(seed=4)
    source = lightning_checkpoint(model, tmp_path / "p.ckpt",
                                  hyper_parameters=argparse.Namespace(lr=1.0))
    target = tmp_path / "p.safetensors"
    assert main(["convert", str(source), "-o", str(target)]) == 2
    assert "argparse.Namespace" in capsys.readouterr().err and not target.exists()
    assert main(["convert", str(source), "-o", str(target), "--trust-checkpoint"]) == 0
    assert set(read_state_dict(target)[0]) == set(model.state_dict())


def test_models_inspect_lists_architecture_model_and_ignored_tensors(tmp_path, capsys):
    model = tiny_model(z_channels=3, seed=1)
    path = lightning_checkpoint(model, tmp_path / "last.ckpt")
    assert main(["models", "--inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == model.config
    assert report["model_tensors"] == len(model.state_dict())
    assert sorted(report["ignored_tensors"]) == sorted(loss_tensors()) + sorted(
        ema_tensors(model))
    assert set(report["other_entries"]) >= {
        "epoch", "global_step", "optimizer_states", "lr_schedulers", "callbacks"}
    assert main(["models", "--inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "loss.* (5 tensors)" in text and "model_ema.*" in text and "ch_mult" in text
