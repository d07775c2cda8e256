"""`load_model`: a named model, a checkpoint file or a diffusers VAE folder -> a ready module.

Weights of named models resolve in this order: the ``weights=`` path, the cache folder
(``MEDVAE_HOME``, default ~/.cache/medvae), a hub download only when explicitly allowed, otherwise a
ModelError that names the file and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Generator
from pathlib import Path

import torch

from ..errors import MedVAEError, ModelError, OutputError, WeightsNotFoundError
from ..imaging.atomic import temporary_sibling
from ..runtime.progress import Progress, run
from .autoencoder import AutoencoderKL
from .checkpoints import (
    checkpoint_config,
    file_sha256,
    load_strict,
    log_ignored,
    read_checkpoint,
    read_state_dict,
)
from .sd_vae import load_diffusers_vae
from .zoo import HUB_REPO, MODELS, ModelSpec, cache_dir, get_spec

DOWNLOAD_CHUNK = 1 << 20  # bytes per progress step (and per cancel check)
DOWNLOAD_TIMEOUT_S = 30.0
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def resolve_weights(
    spec: ModelSpec, weights: str | Path | None = None, download: bool = False
) -> Path:
    """The weights file of a named model, following the documented order."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: weights file for {spec.name} not found")
        return path
    path = spec.local_path()
    if path.is_file():
        return path
    if spec.source == "starter":
        raise WeightsNotFoundError(
            f"{spec.name}: starter weights are not available yet in this installation ({path} missing)"
        )
    if download:
        return download_weights(spec)
    raise WeightsNotFoundError(
        f"{spec.name}: weights file {spec.filename} not found in {cache_dir()}; download "
        f"{spec.hub_file} from huggingface.co/{HUB_REPO} and put it there (or set MEDVAE_HOME, pass "
        f"--weights PATH, or run 'medvae models --download {spec.name}' where the hub is reachable)"
    )


def download_weights(spec: ModelSpec) -> Path:
    """Fetch official weights from the hub into the cache folder (see ``download_steps``)."""
    return run(download_steps(spec))


def download_steps(spec: ModelSpec) -> Generator[Progress, None, Path]:
    """Stream an official model's weights into the cache folder, yielding Progress in bytes.

    The file goes to a hidden temporary name beside its final one and is renamed into place only
    when complete, with the size and the sha256 the hub states (the etag of LFS files) checked;
    a failure or a cancel (closing the generator) leaves nothing behind.
    """
    if spec.source != "official" or not spec.hub_file:
        raise ModelError(f"{spec.name}: only official models are downloaded; this one ships with "
                         "the package")
    try:
        import huggingface_hub as hub  # optional: only downloads need it
        from huggingface_hub.utils import build_hf_headers
    except ImportError:
        raise WeightsNotFoundError(
            f"{spec.name}: downloading needs huggingface_hub (pip install 'napari-medvae[hub]'); "
            f"{_where_to_put(spec)}"
        ) from None
    final = spec.local_path()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{final.parent}: cannot create the weights cache folder ({e})") from None
    try:
        meta = hub.get_hf_file_metadata(hub.hf_hub_url(HUB_REPO, spec.hub_file), token=False)
    except Exception as e:  # offline, DNS, proxy, HTTP errors: all mean "not reachable here"
        raise _unreachable(spec, e) from None
    total = int(meta.size or 0)
    expected = meta.etag if meta.etag and SHA256_HEX.fullmatch(meta.etag) else None
    tmp = temporary_sibling(final)
    digest, done = hashlib.sha256(), 0
    yield Progress(0, total, "download")
    try:
        with hub.get_session().stream(
            "GET", meta.location, headers=build_hf_headers(token=False), follow_redirects=True,
            timeout=DOWNLOAD_TIMEOUT_S,
        ) as response, open(tmp, "wb") as out:
            if response.status_code >= 400:
                raise WeightsNotFoundError(f"{spec.name}: download of {spec.hub_file} failed "
                                           f"(HTTP {response.status_code}); {_where_to_put(spec)}")
            for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                yield Progress(done, max(total, done), "download")
            out.flush()
            os.fsync(out.fileno())
        if total and done != total:
            raise WeightsNotFoundError(f"{spec.name}: download of {spec.hub_file} incomplete "
                                       f"({done} of {total} bytes); try again")
        if expected and digest.hexdigest() != expected:
            raise ModelError(f"{spec.name}: downloaded {spec.hub_file} has sha256 "
                             f"{digest.hexdigest()}, the hub states {expected}; try again")
        os.replace(tmp, final)
    except MedVAEError:
        raise
    except OSError as e:
        raise OutputError(f"{final}: cannot write the downloaded weights ({e})") from None
    except Exception as e:  # the connection broke off while streaming
        raise _unreachable(spec, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _where_to_put(spec: ModelSpec) -> str:
    return (f"fetch {spec.hub_file} from huggingface.co/{HUB_REPO} where the hub is reachable and "
            f"put it in {cache_dir()} as {spec.filename} (or register it with the Model panel's "
            "'Open weights file...', or pass --weights PATH)")


def _unreachable(spec: ModelSpec, error: Exception) -> WeightsNotFoundError:
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    return WeightsNotFoundError(f"{spec.name}: cannot download {spec.hub_file} from the Hugging "
                                f"Face hub ({reason}); {_where_to_put(spec)}")


def register_weights_steps(
    spec: ModelSpec, source: str | Path
) -> Generator[Progress, None, torch.nn.Module]:
    """Check that ``source`` loads into ``spec``'s architecture, then put it in the cache folder
    under its hub file name (a hard link where possible, else a copy) and return the loaded model.

    A file that does not load raises ModelError naming it and the problem; nothing is written then.
    """
    source = Path(source).expanduser()
    if spec.source != "official":
        raise ModelError(f"{spec.name}: starter weights ship with the package; choose an "
                         "official model to register a weights file")
    if not source.is_file():
        raise WeightsNotFoundError(f"{source}: weights file for {spec.name} not found")
    yield Progress(0, 3, "read weights")
    sd, _ = read_state_dict(source)
    yield Progress(1, 3, "check weights")
    model = spec.build()
    load_strict(model, sd, f"{source} (as {spec.name})")
    del sd
    yield Progress(2, 3, "register weights")
    final = spec.local_path()
    if not (final.exists() and os.path.samefile(source, final)):
        yield from _link_or_copy(source, final)
    yield Progress(3, 3, "register weights")
    model.name, model.weights_path = spec.name, str(final)
    return model.eval()


def _link_or_copy(source: Path, final: Path) -> Generator[Progress, None, None]:
    """Hard-link ``source`` to ``final`` (same file system), else copy it; atomic either way."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(final)
        try:
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or links not supported
                with open(source, "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(DOWNLOAD_CHUNK):
                        out.write(chunk)
                        yield Progress(2, 3, "copy weights")
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{final}: cannot register the weights file ({e})") from None


def load_model(
    name_or_path: str | Path,
    weights: str | Path | None = None,
    device: str = "cpu",
    download: bool = False,
    trust_checkpoint: bool = False,
) -> torch.nn.Module:
    """A model in eval mode on ``device`` with ``encode``, ``project``, ``decode`` and metadata.

    ``name_or_path`` is a zoo name, a checkpoint file (.ckpt/.pt/.pth/.safetensors, architecture
    inferred) or a diffusers AutoencoderKL folder (the Stable Diffusion VAE baseline). Tensors
    outside the autoencoder (loss.*, model_ema.*) are ignored and named in one log line;
    ``trust_checkpoint`` unpickles Python objects in the file, which runs its code (unsafe).
    """
    return run(load_model_steps(name_or_path, weights, device, download, trust_checkpoint))


def load_model_steps(
    name_or_path: str | Path,
    weights: str | Path | None = None,
    device: str = "cpu",
    download: bool = False,
    trust_checkpoint: bool = False,
) -> Generator[Progress, None, torch.nn.Module]:
    """``load_model`` as steps (read, build, load), so a GUI job can cancel between them."""
    name = str(name_or_path)
    if name in MODELS:
        spec = get_spec(name)
        path = resolve_weights(spec, weights, download)
        if spec.sha256 and weights is None and file_sha256(path) != spec.sha256:
            raise ModelError(f"{path}: checksum differs from the expected one for {spec.name}")
        yield Progress(0, 3, "read weights")
        checkpoint = read_checkpoint(path, trust_checkpoint)
        yield Progress(1, 3, "build model")
        model = spec.build()
        yield Progress(2, 3, "load weights")
        check_shortcut(spec, checkpoint, path)
        load_strict(model, checkpoint.tensors, f"{path} ({spec.name})")
        log_ignored(checkpoint, path)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            model = load_diffusers_vae(path)
        elif path.is_file():
            yield Progress(0, 3, "read weights")
            checkpoint = read_checkpoint(path, trust_checkpoint)
            yield Progress(1, 3, "build model")
            model = AutoencoderKL(**checkpoint_config(checkpoint, str(path)))
            yield Progress(2, 3, "load weights")
            load_strict(model, checkpoint.tensors, str(path))
            log_ignored(checkpoint, path)
        else:
            raise ModelError(
                f"unknown model {name!r}: not a model name ({', '.join(MODELS)}) nor an existing file"
            )
        name = path.stem
    model.name = name
    model.weights_path = str(path)
    model = model.to(_device(device)).eval()
    yield Progress(3, 3, "load weights")
    return model


def check_shortcut(spec: ModelSpec, checkpoint, path: Path) -> None:
    """A weights file written with a different interpolation shortcut than the zoo's entry has the
    same keys but reconstructs something else: refuse it."""
    trained_with = checkpoint_config(checkpoint, str(path)).get("shortcut", False)
    if trained_with != spec.shortcut:
        raise ModelError(
            f"{path}: weights trained {'with' if trained_with else 'without'} the "
            f"interpolation shortcut, but the zoo's {spec.name} is "
            f"{'with' if spec.shortcut else 'without'} it")


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} requested but MPS is not available")
    return dev


def weights_sha256(model: torch.nn.Module) -> str | None:
    """sha256 of the file the model's weights came from (cached on the model)."""
    if getattr(model, "_weights_sha256", None) is None and getattr(model, "weights_path", None):
        path = Path(model.weights_path)
        model._weights_sha256 = file_sha256(path) if path.is_file() else None
    return getattr(model, "_weights_sha256", None)
