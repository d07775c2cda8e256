"""The training loop shared by all stages: AMP, gradient accumulation, DDP, checkpoints, logging,
validation and export.

Run under ``torchrun`` it uses DDP (gloo on CPU, nccl on CUDA); every process draws its share of the
same global batch, so N processes with batch b reach the same weights as one process with batch N*b.
A checkpoint (models, optimisers, scaler, RNG states, step) is written atomically every
``run.checkpoint_every`` steps; ``resume=True`` continues from it exactly, because every sample and
every posterior-noise draw is a pure function of (seed, step, index in the global batch).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..analysis.metrics import ms_ssim, psnr
from ..errors import MedVAEError
from ..imaging.atomic import atomic_write, atomic_write_text
from ..models.checkpoints import save_model
from ..models.lora import merge_lora
from .config import TrainConfig, config_as_dict, load_config
from .data import PatchDataset, StepBatches, load_sources, train_loader, validation_crops
from .stages import (
    Recipe,
    TrainingNet,
    build_recipe,
    discriminator_loss,
    embedding_distance,
    generator_loss,
    posterior_noise,
)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
LOG_COLUMNS = ("step", "time_s", "loss", "l1", "perceptual", "kl", "g_adv", "d_weight", "disc",
               "embed", "val_psnr", "val_msssim", "val_embed")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def run_training(config_path: str | Path, resume: bool = False, overrides: dict | None = None,
                 stop_at: int | None = None, export_only: bool = False) -> Iterator[dict]:
    """Train from a YAML config, yielding progress after every step (see `train`)."""
    config = load_config(config_path, overrides)
    yield from train(config, resume=resume, stop_at=stop_at, export_only=export_only)


class Distributed:
    """Rank, world size and device of this process (DDP set up when launched by torchrun)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise MedVAEError(f"run.device {device!r} requested but CUDA is not available")
        self.device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(config: TrainConfig, resume: bool = False, stop_at: int | None = None,
          export_only: bool = False) -> Iterator[dict]:
    """Run the configured stage; yields {step, steps, loss parts, val metrics} after every step.

    ``stop_at`` ends the run after that step (after its checkpoint) as if it had been killed;
    ``export_only`` writes the model and card from the last checkpoint without training.
    """
    env = Distributed(config.run.device)
    try:
        yield from _train(config, env, resume or export_only, stop_at, export_only)
    finally:
        env.close()


def run_folder(output_dir: str, resume: bool) -> tuple[Path, Path]:
    """The run folder and its checkpoint path; refuses to start over a run or resume from nothing."""
    out = Path(output_dir)
    ckpt_path = out / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise MedVAEError(f"{ckpt_path}: a run already exists here; pass --resume to continue it "
                          "or choose another run.output_dir")
    if resume and not ckpt_path.exists():
        raise MedVAEError(f"{ckpt_path}: no checkpoint to resume from")
    return out, ckpt_path


def _train(config: TrainConfig, env: Distributed, resume: bool, stop_at: int | None,
           export_only: bool):
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    _seed_everything(config.seed)
    out, ckpt_path = run_folder(config.run.output_dir, resume)
    train_set, val_set = load_sources(config)
    recipe = build_recipe(config, env.device)
    model = recipe.model
    betas = tuple(config.optim.betas)
    opt_g = torch.optim.Adam(recipe.trainable, lr=config.optim.lr, betas=betas,
                             eps=config.optim.eps)
    disc = recipe.discriminator
    opt_d = None
    if disc is not None:
        disc_lr = config.loss.adversarial.lr or config.optim.lr
        opt_d = torch.optim.Adam(disc.parameters(), lr=disc_lr, betas=betas, eps=config.optim.eps)
    precision = config.run.precision
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    start = 0
    if resume:
        start = _restore(ckpt_path, recipe, opt_g, opt_d, scaler)
    net = TrainingNet(model, config.stage).to(env.device)
    disc_net = disc
    if env.world > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=ids)
        if disc is not None:
            disc_net = DistributedDataParallel(disc, device_ids=ids)
    accumulation = config.optim.accumulation
    batch = config.data.batch_size
    global_batch = batch * accumulation * env.world
    spatial_dims = model.spatial_dims
    dataset = PatchDataset(train_set, config, model.factor, model.in_channels, global_batch,
                           spatial_dims, held_out=val_set)
    loader = train_loader(
        dataset, StepBatches(start, config.run.steps, batch, accumulation, env.rank, env.world),
        config.data.workers)
    val_side = config.data.patch if spatial_dims == 3 else config.data.val_crop
    val_inputs = validation_crops(val_set, spatial_dims, val_side, model.factor, model.in_channels)
    log = MetricsLog(out / METRICS, start) if env.main else None
    if export_only:
        if env.main:
            export(recipe, config, out, train_set, val_set, log, start, global_batch, env.world)
        return
    autocast = _autocast(env.device, precision)
    batches = iter(loader)
    window: dict[str, list[float]] = {}
    t0 = time.monotonic()
    for step in range(start, config.run.steps):
        model.train()
        disc_on = disc is not None and step >= config.loss.adversarial.start_step
        opt_g.zero_grad(set_to_none=True)
        pairs = []
        for m in range(accumulation):
            x = next(batches).to(env.device)
            first = step * global_batch + (m * env.world + env.rank) * batch
            noise = None
            if config.stage != "stage2_2d":
                latent_shape = (x.shape[0], model.latent_channels,
                                *(s // model.factor for s in x.shape[2:]))
                noise = posterior_noise(latent_shape, config.seed, first, env.device)
            sync = m == accumulation - 1
            with _no_sync(net, sync), autocast:
                outputs = net(x, noise)
                loss, logs = generator_loss(recipe, config, x, outputs, disc_on)
            with _no_sync(net, sync):
                scaler.scale(loss / accumulation).backward()
            _collect(window, logs)
            if disc_on:
                pairs.append((x, outputs[0].detach()))
        for group in opt_g.param_groups:
            group["lr"] = learning_rate(config.optim, step, config.run.steps)
        if config.optim.grad_clip:
            scaler.unscale_(opt_g)
            torch.nn.utils.clip_grad_norm_(recipe.trainable, config.optim.grad_clip)
        scaler.step(opt_g)
        if disc_on:
            opt_d.zero_grad(set_to_none=True)
            for m, (x, xr) in enumerate(pairs):
                sync = m == accumulation - 1
                with _no_sync(disc_net, sync), autocast:
                    d_loss = discriminator_loss(disc_net, x, xr)
                with _no_sync(disc_net, sync):
                    scaler.scale(d_loss / accumulation).backward()
                _collect(window, {"disc": d_loss.item()})
            scaler.step(opt_d)
        scaler.update()
        done = step + 1
        row = {}
        if env.main and (done % config.run.val_every == 0 or done == config.run.steps):
            row.update(validate(recipe, config, val_inputs, autocast))
        if env.main and (done % config.run.log_every == 0 or done == config.run.steps or row):
            row.update({k: float(np.mean(v)) for k, v in window.items()})
            log.write(done, time.monotonic() - t0, row)
            window = {}
        if done % config.run.checkpoint_every == 0 or done == config.run.steps or done == stop_at:
            if env.main:
                _save_checkpoint(ckpt_path, done, recipe, opt_g, opt_d, scaler, global_batch,
                                 config)
            env.barrier()
        yield {"step": done, "steps": config.run.steps, **row}
        if stop_at is not None and done >= stop_at:
            return
    if env.main:
        export(recipe, config, out, train_set, val_set, log, config.run.steps, global_batch,
               env.world)
    env.barrier()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision])


def _no_sync(module, sync: bool):
    """DDP's no_sync on micro-steps that only accumulate (a no-op without DDP)."""
    if sync or not isinstance(module, DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def _collect(window: dict[str, list[float]], logs: dict[str, float]) -> None:
    for k, v in logs.items():
        window.setdefault(k, []).append(v)


@torch.no_grad()
def validate(recipe: Recipe, config: TrainConfig, inputs: list, autocast) -> dict[str, float]:
    """Mean PSNR and MS-SSIM (images mapped to [0, 1]) of held-out reconstructions; stage 2 also the
    embedding distance."""
    if not inputs:
        return {}
    model = recipe.model.eval()
    psnrs, msssims, embeds = [], [], []
    for _, x in inputs:
        x = x[None].to(next(model.parameters()).device)
        with autocast:
            xr = model(x).float()
            if recipe.stage == "stage2_2d":
                embeds.append(embedding_distance(recipe, config, x))
        ref = ((x[0, 0].cpu().numpy() + 1) / 2).clip(0, 1)
        rec = ((xr[0, 0].cpu().numpy() + 1) / 2).clip(0, 1)
        psnrs.append(psnr(ref, rec))
        score = ms_ssim(ref, rec)
        if hasattr(score, "value"):
            msssims.append(score.value)
    out = {"val_psnr": float(np.mean(psnrs))}
    if msssims:
        out["val_msssim"] = float(np.mean(msssims))
    if embeds:
        out["val_embed"] = float(np.mean(embeds))
    return out


class MetricsLog:
    """metrics.csv (one row per logged step; on resume rows after the checkpoint are dropped), plus
    TensorBoard events when tensorboard is installed."""

    def __init__(self, path: Path, start: int, columns: tuple[str, ...] = LOG_COLUMNS):
        self.path = path
        self.columns = columns
        self.last_losses: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start > 0 and path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        for row in kept:
            values = {k: float(v) for k, v in row.items() if k not in ("step", "time_s") and v}
            self.last_losses.update({k: v for k, v in values.items() if not k.startswith("val_")})
            self.last_val.update({k: v for k, v in values.items() if k.startswith("val_")})
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(kept)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:
            pass

    def write(self, step: int, seconds: float, values: dict[str, float]) -> None:
        self.last_losses.update({k: v for k, v in values.items() if not k.startswith("val_")})
        self.last_val.update({k: v for k, v in values.items() if k.startswith("val_")})
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            formatted = {k: f"{v:.6g}" for k, v in values.items()}
            csv.DictWriter(f, self.columns).writerow(
                {"step": step, "time_s": f"{seconds:.1f}", **formatted})
        if self.tensorboard is not None:
            for k, v in values.items():
                self.tensorboard.add_scalar(k, v, step)
            self.tensorboard.flush()


def _rng_states() -> dict:
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((3, tuple(states["python"]), None))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _save_checkpoint(path: Path, step: int, recipe: Recipe, opt_g, opt_d, scaler, global_batch: int,
                     config: TrainConfig) -> None:
    state = {
        "step": step,
        "data_position": step * global_batch,
        "global_batch": global_batch,
        "stage": config.stage,
        "model": recipe.model.state_dict(),
        "discriminator": recipe.discriminator.state_dict() if recipe.discriminator else {},
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict() if opt_d else {},
        "scaler": scaler.state_dict(),
        "rng": _rng_states(),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _restore(path: Path, recipe: Recipe, opt_g, opt_d, scaler) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MedVAEError(f"{path}: unreadable training checkpoint ({str(e)[:160]})") from None
    if state.get("stage") != recipe.stage:
        raise MedVAEError(
            f"{path}: checkpoint is of {state.get('stage')}, the config says {recipe.stage}")
    recipe.model.load_state_dict(state["model"])
    if recipe.discriminator is not None:
        recipe.discriminator.load_state_dict(state["discriminator"])
        opt_d.load_state_dict(state["opt_d"])
    opt_g.load_state_dict(state["opt_g"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_states(state["rng"])
    return int(state["step"])


def export(recipe: Recipe, config: TrainConfig, out: Path, train_set, val_set, log: MetricsLog,
           steps: int, global_batch: int, world: int) -> Path:
    """The final model (LoRA merged) as safetensors plus model_card.json / model_card.md."""
    model = merge_lora(recipe.model).eval()
    card = {
        "name": out.name,
        "stage": config.stage,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "init": recipe.init,
        "architecture": model.config,
        "steps": steps,
        "global_batch": global_batch,
        "processes": world,
        "precision": config.run.precision,
        "perceptual": config.loss.perceptual.kind if config.stage != "stage2_2d" else "none",
        "embedder": config.embedder.kind,
        "data": {"train": [r.label for r in train_set.refs],
                 "val": [r.label for r in val_set.refs]},
        "final_losses": log.last_losses,
        "validation": log.last_val,
        "config": config_as_dict(config),
    }
    path = save_model(model, out / "model.safetensors", card)
    atomic_write_text(out / "model_card.json", json.dumps(card, indent=2))
    atomic_write_text(out / "model_card.md", model_card_markdown(card))
    return path


def learning_rate(optim, step: int, total: int) -> float:
    """The generator learning rate at ``step``: linear warm-up, then constant or cosine decay.

    A pure function of the step, so a resumed run follows the same schedule without stored state.
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return optim.lr * (optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * cosine)


def _recipe_lines(config: dict) -> list[str]:
    """Learning-rate schedule and augmentation of the run, from the card's copy of its config."""
    optim, data = config.get("optim"), config.get("data")
    lines = []
    if optim:
        lines.append(f"- Learning rate: {optim['lr']:g}, {optim.get('schedule', 'constant')} schedule"
                     f" ({optim.get('warmup_steps', 0)} warm-up steps)")
    aug = (data or {}).get("augment")
    if aug:
        lines.append(f"- Augmentation: flips and quarter turns {'on' if aug['flips'] else 'off'}; "
                     f"contrast squeeze p={aug['contrast']:g} (sub-range >= {aug['min_range']:g})")
    if data and data.get("crop"):
        crops = f"- Crops: 2D sides {data['crop'][0]}-{data['crop'][1]}"
        if data.get("large_share"):
            lo, hi = data["large_crop"]
            crops += f", {data['large_share']:.0%} of the steps {lo}-{hi}"
        if data.get("flat_share"):
            crops += f"; {data['flat_share']:.0%} of the crops drawn flat"
        lines.append(crops)
    return lines


def model_card_markdown(card: dict) -> str:
    """A short human-readable model card."""
    lines = [
        f"# {card['name']}", "",
        f"MedVAE {card['stage']} model trained with napari-medvae on {card['created']}.", "",
        f"- Initialised from: {card['init']}",
        f"- Architecture: {json.dumps(card['architecture'])}",
        f"- Steps: {card['steps']} (global batch {card['global_batch']}, {card['processes']} "
        f"process(es), {card['precision']})",
        f"- Perceptual loss: {card['perceptual']}; embedder: {card['embedder']}",
        *_recipe_lines(card.get("config", {})), "",
        "## Data", "", "Training:", *[f"- {s}" for s in card["data"]["train"]], "",
        "Held-out validation:", *([f"- {s}" for s in card["data"]["val"]] or ["- (none)"]), "",
        "## Final losses", "", *[f"- {k}: {v:.6g}" for k, v in card["final_losses"].items()], "",
        "## Validation", "", *[f"- {k}: {v:.6g}" for k, v in card["validation"].items()], "",
    ]
    return "\n".join(lines)
