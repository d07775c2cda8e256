"""Fixtures shared by the engine and plugin tests: a small official-layout model in the zoo and the
Hugging Face hub served from memory behind huggingface_hub's own HTTP client (nothing touches the
network)."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from medvae_engine.models import AutoencoderKL
from medvae_engine.models.zoo import HUB_REPO, MODELS, ModelSpec

SMALL_OFFICIAL = ModelSpec("small_official_2d", 2, 4, 1, 1, 32, (1, 2, 4), "official",
                           "vae_small_2D.ckpt", hub_file="model_weights/vae_small_2D.ckpt",
                           num_res_blocks=1, description="official key layout, small width")


def official_checkpoint(path: Path, spec: ModelSpec = SMALL_OFFICIAL, seed: int = 0) -> Path:
    """A seeded model of ``spec`` saved as the official code does: ``{"state_dict": ...}`` .ckpt."""
    torch.manual_seed(seed)
    model = AutoencoderKL(**spec.config())
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture
def write_official_checkpoint():
    """``official_checkpoint`` as a fixture (test modules cannot import the root conftest)."""
    return official_checkpoint


@pytest.fixture
def small_official(monkeypatch, tmp_path) -> ModelSpec:
    """``small_official_2d`` in the zoo, with an empty weights cache (MEDVAE_HOME)."""
    monkeypatch.setenv("MEDVAE_HOME", str(tmp_path / "medvae_cache"))
    monkeypatch.setitem(MODELS, SMALL_OFFICIAL.name, SMALL_OFFICIAL)
    return SMALL_OFFICIAL


@dataclass
class FakeHub:
    """Files of ``stanfordmimi/MedVAE`` by hub path; every request is recorded."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    offline: bool = False
    sha256: dict[str, str] = field(default_factory=dict)  # what the hub states (default: the truth)


@pytest.fixture
def fake_hub(monkeypatch):
    """The hub answered from memory by a mock transport in huggingface_hub's HTTP client."""
    import huggingface_hub

    http = sys.modules[type(huggingface_hub.get_session()).__module__.split(".")[0]]
    hub = FakeHub()
    prefix = f"/{HUB_REPO}/resolve/main/"

    def handler(request):
        hub.requests.append((request.method, str(request.url)))
        if hub.offline:
            raise http.ConnectError("[Errno -3] Temporary failure in name resolution",
                                    request=request)
        name = request.url.path[len(prefix):]
        if request.url.host != "huggingface.co" or name not in hub.files:
            return http.Response(404, headers={"X-Error-Code": "EntryNotFound"}, request=request)
        data = hub.files[name]
        sha = hub.sha256.get(name, hashlib.sha256(data).hexdigest())
        headers = {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                   "X-Repo-Commit": "0" * 40, "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return http.Response(200, headers=headers, request=request)
        return http.Response(200, headers=headers, content=data, request=request)

    factory = huggingface_hub.utils._http._GLOBAL_CLIENT_FACTORY
    huggingface_hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(handler)))
    yield hub
    huggingface_hub.set_client_factory(factory)
