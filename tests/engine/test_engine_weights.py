"""Official weights: streamed download from a mocked hub, registration of a local file, cancel
inside a model call. Nothing touches the network (the hub is served from memory)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from medvae_engine.cli import main
from medvae_engine.codec.pipeline import CodecOptions, encode_steps
from medvae_engine.errors import Cancelled, ModelError, WeightsNotFoundError
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import load_model, weights_sha256
from medvae_engine.models.loading import (
    DOWNLOAD_CHUNK,
    download_steps,
    load_model_steps,
    register_weights_steps,
)
from medvae_engine.models.zoo import cache_dir
from medvae_engine.runtime.cancel import cancel_scope
from medvae_engine.runtime.progress import run


@pytest.fixture
def checkpoint(tmp_path, small_official, write_official_checkpoint):
    return write_official_checkpoint(tmp_path / "downloaded_elsewhere.ckpt")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_download_streams_with_progress_and_the_weights_load(small_official, fake_hub, checkpoint):
    data = checkpoint.read_bytes()
    fake_hub.files[small_official.hub_file] = data
    assert not small_official.available
    steps = download_steps(small_official)
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as stop:
        path = stop.value
    assert path == cache_dir() / small_official.filename and path.read_bytes() == data
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[-1].done == len(data)
    assert {p.total for p in seen} == {len(data)} and len(seen) == 1 + -(-len(data) // DOWNLOAD_CHUNK)
    assert small_official.available and sorted(cache_dir().iterdir()) == [path]
    url = "https://huggingface.co/stanfordmimi/MedVAE/resolve/main/model_weights/vae_small_2D.ckpt"
    assert sorted(r for r in fake_hub.requests if r[1] == url) == [("GET", url), ("HEAD", url)]
    model = load_model(small_official.name)
    assert weights_sha256(model) == hashlib.sha256(data).hexdigest()


def test_checksum_differing_from_the_hub_keeps_nothing(small_official, fake_hub, checkpoint):
    fake_hub.files[small_official.hub_file] = checkpoint.read_bytes()
    fake_hub.sha256[small_official.hub_file] = "0" * 64
    with pytest.raises(ModelError, match="the hub states 0000"):
        run(download_steps(small_official))
    assert not small_official.available and list(cache_dir().iterdir()) == []


def test_offline_error_names_the_file_and_where_to_put_it(small_official, fake_hub):
    fake_hub.offline = True
    with pytest.raises(WeightsNotFoundError) as info:
        run(download_steps(small_official))
    message = str(info.value)
    assert "model_weights/vae_small_2D.ckpt" in message and "ConnectError" in message
    assert f"put it in {cache_dir()} as vae_small_2D.ckpt" in message
    assert not small_official.available


def test_cancel_during_download_leaves_no_partial_file(small_official, fake_hub, checkpoint):
    fake_hub.files[small_official.hub_file] = checkpoint.read_bytes()
    assert len(fake_hub.files[small_official.hub_file]) > 2 * DOWNLOAD_CHUNK
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        run(download_steps(small_official), lambda p: p.done and cancel.set(), cancel)
    assert list(cache_dir().iterdir()) == []


def test_cli_download_and_offline_error(small_official, fake_hub, checkpoint, capsys):
    fake_hub.offline = True
    assert main(["models", "--download", small_official.name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: small_official_2d: cannot download") and err.count("\n") == 1
    fake_hub.offline = False
    fake_hub.files[small_official.hub_file] = checkpoint.read_bytes()
    assert main(["models", "--download", small_official.name]) == 0
    assert "downloaded small_official_2d to" in capsys.readouterr().out
    assert sha256_of(small_official.local_path()) == sha256_of(checkpoint)


def test_register_checks_by_loading_then_links_into_the_cache(small_official, checkpoint):
    model = run(register_weights_steps(small_official, checkpoint))
    registered = small_official.local_path()
    assert model.weights_path == str(registered) and sha256_of(registered) == sha256_of(checkpoint)
    reference = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    assert weights_sha256(load_model(small_official.name)) == sha256_of(checkpoint)


@pytest.mark.parametrize("wrong, problem", [
    ("dicom", "not a readable checkpoint"),
    ("other architecture", "checkpoint does not match the model"),
])
def test_a_wrong_file_is_refused_naming_it_and_the_problem(small_official, tmp_path, wrong,
                                                           problem, write_official_checkpoint):
    if wrong == "dicom":
        path = Path(get_testdata_file("CT_small.dcm"))
    else:
        other = type(small_official)(**{**small_official.__dict__, "ch_mult": (1, 2, 2)})
        path = write_official_checkpoint(tmp_path / "other.ckpt", other)
    with pytest.raises(ModelError) as info:
        run(register_weights_steps(small_official, path))
    assert str(info.value).startswith(str(path)) and problem in str(info.value)
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_loading_steps_give_the_same_model_as_load_model(tmp_path, small_official, checkpoint):
    steps = list_steps(load_model_steps(checkpoint))
    assert [p.stage for p in steps[0]] == ["read weights", "build model", "load weights",
                                           "load weights"]
    reference = load_model(checkpoint)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in steps[1].state_dict().items())


def list_steps(steps):
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as stop:
        return seen, stop.value


def test_cancel_inside_one_model_call_stops_before_the_next_module(small_official, checkpoint):
    """One window is one model call: a cancel set during it stops at the next torch operation."""
    model = load_model(checkpoint)
    ran: list[str] = []
    cancel = threading.Event()
    names = {module: name for name, module in model.named_modules()}

    def record(module, _inputs):
        ran.append(names[module])
        if names[module] == "encoder.down.1.block.0":
            cancel.set()  # as if the user pressed Cancel while the encoder runs

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    volume = Volume(np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32), np.eye(4),
                    "mri", {})
    with cancel_scope(cancel), pytest.raises(Cancelled):
        run(encode_steps(volume, model, CodecOptions()))
    for hook in hooks:
        hook.remove()
    # stopped at the first torch operation after the cancel: in block.0's first module, norm1
    assert ran[-1] == "encoder.down.1.block.0.norm1" and "encoder.conv_out" not in ran
    ran.clear()
    latent = run(encode_steps(volume, model, CodecOptions()))  # outside a scope: no effect
    assert latent.array.shape == (1, 8, 8) and not ran
