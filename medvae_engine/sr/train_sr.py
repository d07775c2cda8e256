"""`medvae train-sr CONFIG.yaml`: train the conditional latent-diffusion SR UNet.

HR crops are drawn once from the data sources (the training pipeline's sources and crop sampler),
degraded to LR, encoded by the frozen autoencoder and cached to one file that later runs reuse
while its key (autoencoder weights, data, crops, degradation, seed) matches. Training is AdamW with
a cosine learning-rate decay, gradient clipping, AMP and DDP under torchrun; each sample's crop,
timestep and noise are pure functions of (seed, step, index in the global batch), so a resumed run
continues bit-exactly from its atomic checkpoint. Validation reports the SR PSNR next to bicubic
and to the autoencoder ceiling (the HR latent decoded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..analysis.metrics import psnr
from ..codec.baselines import PIXELS
from ..codec.spec import load_codec
from ..data.degradation import degrade, lr_scale
from ..data.sources import SourceSpec, expand_source, load_image
from ..errors import ConfigError, MedVAEError
from ..imaging.atomic import atomic_write, atomic_write_text
from ..models import MODELS, weights_sha256
from ..runtime.distributed import Distributed
from ..runtime.ema import EMA
from ..runtime.loop import load_checkpoint, prepare_run, step_loop, warmup_cosine
from ..runtime.metrics_log import METRICS, MetricsLog
from ..runtime.precision import autocast as autocast_context
from ..runtime.progress import Progress
from ..runtime.seeding import rng_states, set_rng_states
from ..training.config import AugmentSection, build_dataclass, read_yaml_config, resolve_path
from ..training.data import ImageSet, PatchDataset
from ..version import __version__
from .objectives import diffuse, diffusion_target, flow_interpolate, flow_target, regression_loss
from .pipeline import (
    condition,
    decode_latents,
    encode_images,
    sample_latents_steps,
    upsample_bicubic,
)
from .samplers import run_sampler
from .schedules import cosine_schedule
from .unet import SRDenoiser, load_sr_model, save_sr_model, unet_config

MODEL_FILE = "sr_model.safetensors"
MODEL_FOLDER = "sr_model"  # the same model as a diffusers folder
LOG_COLUMNS = ("step", "time_s", "loss", "lr", "val_psnr_sr", "val_psnr_bicubic", "val_psnr_ae")
ENCODE_BATCH = 8


@dataclasses.dataclass
class SRDataSection:
    train: list[SourceSpec]
    val: list[SourceSpec] = dataclasses.field(default_factory=list)
    axes: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    hr_size: int = 256  # HR crop side in pixels
    crops: int = 1024  # HR crops cached for training (drawn across all training images)
    batch_size: int = 8  # per process
    cache: str | None = None  # latent cache file (default: run.output_dir/latent_cache.pt)


@dataclasses.dataclass
class DegradationSection:
    kind: Literal["bicubic", "lanczos", "blur"] = "bicubic"
    scale: int = 4
    sigma: float | None = None  # blur: Gaussian sigma in HR pixels (default scale / 2)


@dataclasses.dataclass
class SRModelSection:
    autoencoder: str = "starter_4_3_2d"  # zoo name, checkpoint file, diffusers folder or pixels
    preset: Literal["latent_sr", "tiny"] = "latent_sr"
    channels: list[int] | None = None  # override the preset's block channels
    layers: int | None = None  # override layers per block
    attention: list[int] | None = None  # override latent resolutions with attention
    objective: Literal["x0", "epsilon", "v", "flow"] = "x0"
    loss: Literal["l1", "l2"] = "l1"
    train_steps: int = 1000  # diffusion timesteps of the cosine schedule
    init: str | None = None  # SR model file to fine-tune (ours or a latent-sr .ckpt)
    conditioning: Literal["latent", "pixel"] = "latent"  # LR latent upsampled / LR upsampled, encoded
    residual: bool = False  # generate HR latent minus condition latent (zero = the condition)
    normalize_latents: bool = True  # per-channel shift/scale measured on the training latents


@dataclasses.dataclass
class SROptimSection:
    lr: float = 1e-4
    min_lr: float = 1e-6  # end of the cosine decay
    weight_decay: float = 0.01
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999  # EMA of the weights (warm-up min(decay, (1+n)/(10+n))); 0: off


@dataclasses.dataclass
class SRValidationSection:
    sampler: Literal["ddpm", "ddim", "flow", "latent-sr"] = "ddim"
    steps: int = 50
    images: int = 8  # held-out crops scored (the first ones)


@dataclasses.dataclass
class SRRunSection:
    steps: int
    output_dir: str
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    device: str = "auto"
    threads: int | None = None
    checkpoint_every: int = 500
    val_every: int = 500
    log_every: int = 10


@dataclasses.dataclass
class SRTrainConfig:
    data: SRDataSection
    run: SRRunSection
    seed: int = 0
    degradation: DegradationSection = dataclasses.field(default_factory=DegradationSection)
    model: SRModelSection = dataclasses.field(default_factory=SRModelSection)
    optim: SROptimSection = dataclasses.field(default_factory=SROptimSection)
    validation: SRValidationSection = dataclasses.field(default_factory=SRValidationSection)
    base_dir: str = dataclasses.field(default=".", metadata={"internal": True})


def load_sr_config(path: str | Path, overrides: dict | None = None) -> SRTrainConfig:
    """Read and validate an SR training YAML (same strictness as the autoencoder configs)."""
    path = Path(path)
    raw = read_yaml_config(path, overrides)
    config = build_dataclass(SRTrainConfig, raw, str(path))
    config.base_dir = str(path.resolve().parent)
    check_sr_semantics(config, str(path))
    return config


def check_sr_semantics(config: SRTrainConfig, source: str) -> None:
    """Value checks the types cannot express."""
    def fail(key: str, why: str):
        raise ConfigError(f"{source}: key '{key}' {why}")

    if not config.data.train:
        fail("data.train", "must list at least one source")
    for key, value in (("data.hr_size", config.data.hr_size), ("data.crops", config.data.crops),
                       ("data.batch_size", config.data.batch_size),
                       ("degradation.scale", config.degradation.scale),
                       ("model.train_steps", config.model.train_steps),
                       ("validation.steps", config.validation.steps),
                       ("run.steps", config.run.steps),
                       ("run.checkpoint_every", config.run.checkpoint_every),
                       ("run.val_every", config.run.val_every),
                       ("run.log_every", config.run.log_every)):
        if value < 1:
            fail(key, f"must be >= 1, got {value}")
    if any(a not in (0, 1, 2) for a in config.data.axes):
        fail("data.axes", f"must hold axes among 0, 1, 2, got {config.data.axes}")
    flow_model = config.model.objective == "flow"
    if flow_model != (config.validation.sampler == "flow"):
        fail("validation.sampler", f"{config.validation.sampler!r} does not fit objective "
             f"{config.model.objective!r} (flow models sample with flow, diffusion ones without)")
    if not flow_model and config.validation.steps > config.model.train_steps:
        fail("validation.steps", f"must be <= model.train_steps ({config.model.train_steps})")
    if len(config.optim.betas) != 2:
        fail("optim.betas", "must be two numbers")


def _resolve_model_path(config: SRTrainConfig, value: str) -> str:
    """A zoo name or ``pixels`` as is; anything else as a path relative to the config file."""

    if value in MODELS or value == PIXELS:
        return value
    return str(resolve_path(config, value))


def crop_multiple(factor: int, scale: int, unet_multiple: int) -> int:
    """HR crop sides must be a multiple of this (LR encodable, HR latent fits the UNet)."""
    return math.lcm(factor * unet_multiple, factor * scale)


def build_sr_model(config: SRTrainConfig, latent_channels: int, factor: int,
                   latent_norm: dict | None = None) -> SRDenoiser:
    """A new UNet of the configured preset (or the ``model.init`` file to fine-tune)."""
    m = config.model
    if m.init:
        model = load_sr_model(resolve_path(config, m.init))
        if model.latent_channels != latent_channels:
            raise ConfigError(f"model.init {m.init}: {model.latent_channels}-channel latents, the "
                              f"autoencoder makes {latent_channels}")
        return model.train()
    overrides = {k: v for k, v in (("channels", m.channels), ("layers", m.layers),
                                   ("attention", m.attention)) if v is not None}
    overrides["sample_size"] = max(1, config.data.hr_size // factor)
    kwargs = unet_config(latent_channels, m.preset, **overrides)
    return SRDenoiser(kwargs, m.objective, "ddpm", m.train_steps, conditioning=m.conditioning,
                      residual=m.residual, latent_norm=latent_norm)


def cached_condition(cache: dict, conditioning: str, index=None, prefix: str = "") -> torch.Tensor:
    """Condition latents of cached crops: the LR latent bilinearly upsampled (``latent``) or the
    encoded bicubic-upsampled LR image (``pixel``)."""
    def pick(key: str) -> torch.Tensor:
        x = cache[prefix + key]
        return x if index is None else x[index]

    if conditioning == "pixel":
        return pick("up_latents")
    return condition(pick("lr_latents"), tuple(cache[prefix + "hr_latents"].shape[-2:]))


def measure_latent_norm(config: SRTrainConfig, cache: dict) -> dict:
    """Per-channel mean and SD of the condition latents and of the generated target over all
    training crops (the diffusion schedule assumes zero-mean unit-variance data)."""
    m = config.model
    cond = cached_condition(cache, m.conditioning)
    target = cache["hr_latents"] - cond if m.residual else cache["hr_latents"]

    def stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
        x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
        return x.mean(1).tolist(), x.std(1).clamp(min=1e-6).tolist()

    (cs, cc), (ts, tc) = stats(cond), stats(target)
    return {"cond_shift": cs, "cond_scale": cc, "target_shift": ts, "target_scale": tc}


# ----------------------------------------------------------------------------- latent cache


def cache_key(config: SRTrainConfig, autoencoder, sources: list[str]) -> str:
    """What the cached latents depend on; a different key means the cache is rebuilt."""
    identity = {
        "autoencoder": getattr(autoencoder, "name", ""),
        "weights_sha256": weights_sha256(autoencoder) if autoencoder.weights_path else None,
        "sources": sources, "axes": config.data.axes, "hr_size": config.data.hr_size,
        "crops": config.data.crops, "val_images": config.validation.images,
        "degradation": dataclasses.asdict(config.degradation), "seed": config.seed,
        "version": __version__, "layout": 2,  # 2: also the encoded bicubic-upsampled LR crops
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _encode_all(autoencoder, images: torch.Tensor) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], ENCODE_BATCH):
            out.append(encode_images(autoencoder, images[start : start + ENCODE_BATCH]).cpu())
    return torch.cat(out)


def _decode_all(autoencoder, latents: torch.Tensor) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, latents.shape[0], ENCODE_BATCH):
            out.append(decode_latents(autoencoder, latents[start : start + ENCODE_BATCH]).cpu())
    return torch.cat(out)


def _degrade_all(hr: torch.Tensor, config: SRTrainConfig) -> torch.Tensor:
    d = config.degradation
    lows = [degrade(x[0].numpy(), d.kind, d.scale, d.sigma) for x in hr]
    return torch.from_numpy(np.stack(lows))[:, None]


def _encode_upsampled(autoencoder, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Latents of the LR images bicubic-upsampled to the HR size (the ``pixel`` condition)."""
    out = []
    for start in range(0, lr.shape[0], ENCODE_BATCH):
        out.append(_encode_all(autoencoder, upsample_bicubic(lr[start : start + ENCODE_BATCH],
                                                             size)))
    return torch.cat(out)


def build_latent_cache(config: SRTrainConfig, autoencoder, multiple: int) -> dict:
    """Draw, degrade and encode the training and validation crops once."""
    train_refs = [r for s in config.data.train for r in expand_source(s, config.data.axes, config.base_dir)]
    val_refs = [r for s in config.data.val for r in expand_source(s, config.data.axes, config.base_dir)]
    if {r.key for r in train_refs} & {r.key for r in val_refs}:
        raise ConfigError("a validation image is also listed for training; keep it held out")
    train = ImageSet(train_refs, [load_image(r) for r in train_refs])
    side = config.data.hr_size
    sampler_config = SimpleNamespace(seed=config.seed, data=SimpleNamespace(
        crop=[side, side], patch=side, augment=AugmentSection()))  # HR crops as they are
    crops = PatchDataset(train, sampler_config, multiple, 1, config.data.crops, 2)
    hr = torch.stack([crops[i] for i in range(config.data.crops)])
    lr = _degrade_all(hr, config)
    cache = {"hr_latents": _encode_all(autoencoder, hr), "lr_latents": _encode_all(autoencoder, lr),
             "up_latents": _encode_upsampled(autoencoder, lr, tuple(hr.shape[-2:]))}
    # held-out crops drawn like training crops (flat crops redrawn), from images at least a crop
    # wide: a centred crop of a CT is mostly uniform tissue and says little about SR
    val_arrays = [load_image(r) for r in val_refs]
    big = [i for i, a in enumerate(val_arrays) if min(a.shape) >= side]
    if big:
        val_set = ImageSet([val_refs[i] for i in big], [val_arrays[i] for i in big])
        n = config.validation.images
        val_crops = PatchDataset(val_set, SimpleNamespace(seed=config.seed + 1, data=sampler_config.data),
                                 multiple, 1, n, 2)
        val_hr = torch.stack([val_crops[i] for i in range(n)])
        val_lr = _degrade_all(val_hr, config)
        val_z_hr = _encode_all(autoencoder, val_hr)
        cache.update(val_hr=val_hr, val_lr=val_lr, val_lr_latents=_encode_all(autoencoder, val_lr),
                     val_up_latents=_encode_upsampled(autoencoder, val_lr, tuple(val_hr.shape[-2:])),
                     val_hr_latents=val_z_hr, val_ae=_decode_all(autoencoder, val_z_hr))
    cache["labels"] = [r.label for r in train_refs] + ["val:" + r.label for r in val_refs]
    return cache


def latent_cache(config: SRTrainConfig, env: Distributed, autoencoder, multiple: int,
                 out: Path) -> dict:
    """Load the cache when its key matches, else build it (rank 0) and write it atomically."""
    path = resolve_path(config, config.data.cache) if config.data.cache else out / "latent_cache.pt"
    sources = [json.dumps(dataclasses.asdict(s), sort_keys=True)
               for s in config.data.train + config.data.val]
    key = cache_key(config, autoencoder, sources)
    if env.main and _cached_key(path) != key:
        cache = build_latent_cache(config, autoencoder, multiple)
        state = {k: v for k, v in cache.items() if isinstance(v, torch.Tensor)}
        state["key"] = key
        state["labels"] = json.dumps(cache["labels"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    env.barrier()
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["labels"] = json.loads(state["labels"])
    return state


def _cached_key(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("key")
    except Exception:
        return None


# ----------------------------------------------------------------------------- training


def cosine_lr(config: SRTrainConfig, step: int) -> float:
    """Learning rate at ``step``: cosine decay from optim.lr to optim.min_lr over run.steps."""
    return warmup_cosine(step, config.run.steps, config.optim.lr, min_lr=config.optim.min_lr)


def draw_batch(config: SRTrainConfig, cache: dict, step: int, rank: int, world: int,
               model: SRDenoiser, device: torch.device):
    """This rank's share of step ``step``: (x0, condition, t, noise), each sample a function of
    (seed, step, index in the global batch)."""
    b = config.data.batch_size
    n = cache["hr_latents"].shape[0]
    index = np.random.default_rng([config.seed, step]).integers(n, size=b * world)
    index = torch.from_numpy(index[rank * b : (rank + 1) * b])
    cond_latent = cached_condition(cache, model.conditioning, index)
    x0 = model.to_target(cache["hr_latents"][index], cond_latent)
    cond = model.normalize_condition(cond_latent)
    ts, noises = [], []
    for i in range(rank * b, (rank + 1) * b):
        g = torch.Generator().manual_seed(int(np.random.default_rng([config.seed, step, i, 7])
                                              .integers(2**62)))
        if model.objective == "flow":
            ts.append(torch.rand((), generator=g, dtype=torch.float64))
        else:
            ts.append(torch.randint(model.train_steps, (), generator=g))
        noises.append(torch.randn(x0.shape[1:], generator=g))
    return x0.to(device), cond.to(device), torch.stack(ts).to(device), torch.stack(noises).to(device)


def sr_loss(net, model: SRDenoiser, schedule, x0, cond, t, noise, loss_kind: str) -> torch.Tensor:
    """The configured objective's regression loss on one batch."""
    if model.objective == "flow":
        z = flow_interpolate(x0, noise, t.float())
        return regression_loss(loss_kind, net(z, cond, t), flow_target(x0, noise))
    ab = schedule.at(t.cpu()).float().to(x0.device)
    z = diffuse(x0, noise, ab)
    return regression_loss(loss_kind, net(z, cond, t),
                           diffusion_target(model.objective, x0, noise, ab))


def run_sr_training(config_path: str | Path, resume: bool = False, overrides: dict | None = None,
                    stop_at: int | None = None) -> Iterator[Progress]:
    """Train from a YAML config; yields Progress after every step (``info``: loss, lr, val_* when
    logged)."""
    config = load_sr_config(config_path, overrides)
    env = Distributed(config.run.device)
    try:
        yield from _train(config, env, resume, stop_at)
    finally:
        env.close()


def _train(config: SRTrainConfig, env: Distributed, resume: bool,
           stop_at: int | None) -> Iterator[Progress]:
    out, ckpt_path = prepare_run(config.run.threads, config.seed, config.run.output_dir, resume)
    autoencoder = load_codec(_resolve_model_path(config, config.model.autoencoder),
                             device=str(env.device))
    if autoencoder.spatial_dims != 2:
        raise ConfigError(f"model.autoencoder {config.model.autoencoder}: SR trains on 2D "
                          "autoencoders")
    factor = int(autoencoder.factor)
    model = build_sr_model(config, int(autoencoder.latent_channels), factor)
    multiple = crop_multiple(factor, lr_scale(config.degradation.kind, config.degradation.scale),
                             model.multiple)
    if config.data.hr_size % multiple or config.data.hr_size % config.degradation.scale:
        raise ConfigError(f"data.hr_size {config.data.hr_size} must be a multiple of {multiple} "
                          f"(autoencoder factor {factor}, scale {config.degradation.scale}, "
                          f"UNet depth)")
    cache = latent_cache(config, env, autoencoder, multiple, out)
    if config.model.normalize_latents and not config.model.init:
        model.latent_norm = measure_latent_norm(config, cache)
    model = model.to(env.device)
    ema = EMA(model, config.optim.ema_decay)
    schedule = cosine_schedule(model.train_steps)
    o = config.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas),
                            weight_decay=o.weight_decay)
    scaler = torch.amp.GradScaler(env.device.type, enabled=config.run.precision == "fp16")
    start = _restore(ckpt_path, model, opt, scaler, ema) if resume else 0
    net = model
    if env.world > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    autocast = autocast_context(env.device, config.run.precision)
    log = MetricsLog(out / METRICS, start, LOG_COLUMNS) if env.main else None

    def one_step(step: int, record) -> dict[str, float]:
        model.train()
        lr = cosine_lr(config, step)
        for group in opt.param_groups:
            group["lr"] = lr
        x0, cond, t, noise = draw_batch(config, cache, step, env.rank, env.world, model,
                                        env.device)
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = sr_loss(net, model, schedule, x0, cond, t, noise, config.model.loss)
        scaler.scale(loss).backward()
        if o.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        scaler.step(opt)
        scaler.update()
        ema.update(model)
        record({"loss": loss.item()})
        return {"lr": lr}

    def validate_ema() -> dict[str, float]:
        with ema.applied(model):
            return validate(model, autoencoder, cache, config)

    def export_ema() -> None:
        with ema.applied(model):
            export(model, config, out, autoencoder, cache, log)

    yield from step_loop(config.run, env, start, log, one_step, validate_ema,
                         lambda done: _save_checkpoint(ckpt_path, done, model, opt, scaler, ema),
                         export_ema, stop_at)


@torch.no_grad()
def validate(model: SRDenoiser, autoencoder, cache: dict, config: SRTrainConfig) -> dict:
    """Mean PSNR ([0, 1] images) of SR, bicubic upsampling and the AE ceiling on held-out crops."""
    if "val_hr" not in cache:
        return {}
    model.eval()
    hr, lr = cache["val_hr"], cache["val_lr"]
    device = next(model.parameters()).device
    cond = cached_condition(cache, model.conditioning, prefix="val_").to(device)
    generators = [torch.Generator().manual_seed(config.seed + i) for i in range(hr.shape[0])]
    v = config.validation
    z = run_sampler(sample_latents_steps(model, cond, v.sampler, v.steps, generators))
    sr = decode_latents(autoencoder, z).cpu()
    bicubic = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False)

    def score(test: torch.Tensor) -> float:
        return float(np.mean([psnr(_unit(a), _unit(b)) for a, b in zip(hr, test)]))

    return {"val_psnr_sr": score(sr), "val_psnr_bicubic": score(bicubic),
            "val_psnr_ae": score(cache["val_ae"])}


def _unit(x: torch.Tensor) -> np.ndarray:
    return ((x[0].float().numpy() + 1) / 2).clip(0, 1)


def _save_checkpoint(path: Path, step: int, model: SRDenoiser, opt, scaler, ema: EMA) -> None:
    state = {"kind": "sr", "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
             "scaler": scaler.state_dict(), "rng": rng_states(),
             **ema.state(),
             "latent_norm": json.dumps(model.latent_norm)}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _restore(path: Path, model: SRDenoiser, opt, scaler, ema: EMA) -> int:
    state = load_checkpoint(path)
    if state.get("kind") != "sr":
        raise MedVAEError(f"{path}: not an SR training checkpoint")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise MedVAEError(f"{path}: checkpoint does not fit the configured UNet "
                          f"({str(e).splitlines()[0][:160]})") from None
    opt.load_state_dict(state["opt"])
    scaler.load_state_dict(state["scaler"])
    ema.restore(state)
    if "latent_norm" in state:
        model.latent_norm = json.loads(state["latent_norm"])
    set_rng_states(state["rng"])
    return int(state["step"])


def export(model: SRDenoiser, config: SRTrainConfig, out: Path, autoencoder, cache: dict,
           log: MetricsLog) -> Path:
    """The trained UNet (EMA weights) as safetensors (config + card in the header), as a diffusers
    folder, and model_card.json."""
    card = {
        "name": out.name,
        "kind": "latent-diffusion super-resolution",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "autoencoder": _resolve_model_path(config, config.model.autoencoder),
        "autoencoder_sha256": weights_sha256(autoencoder) if autoencoder.weights_path else None,
        "scale": lr_scale(config.degradation.kind, config.degradation.scale),
        "degradation": dataclasses.asdict(config.degradation),
        "objective": model.objective,
        "steps": config.run.steps,
        "data": cache["labels"],
        "final_losses": log.last_losses,
        "validation": log.last_val,
        "validation_sampler": dataclasses.asdict(config.validation),
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "base_dir"},
    }
    model.card = card
    path = save_sr_model(model, out / MODEL_FILE, card)
    save_sr_model(model, out / MODEL_FOLDER, card)
    atomic_write_text(out / "model_card.json", json.dumps(card, indent=2))
    return path

