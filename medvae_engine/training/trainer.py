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
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..analysis.metrics import ms_ssim, psnr
from ..errors import MedVAEError
from ..imaging.atomic import atomic_write, atomic_write_text
from ..models.checkpoints import save_model
from ..models.lora import merge_lora
from ..runtime.distributed import Distributed
from ..runtime.ema import EMA
from ..runtime.loop import load_checkpoint, prepare_run, step_loop, warmup_cosine
from ..runtime.metrics_log import METRICS, MetricsLog
from ..runtime.precision import autocast as autocast_context
from ..runtime.progress import Progress
from ..runtime.seeding import rng_states, set_rng_states
from .config import OptimSection, TrainConfig, config_as_dict, load_config
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

LOG_COLUMNS = ("step", "time_s", "loss", "l1", "l2", "perceptual", "kl", "g_adv", "d_weight", "disc",
               "embed", "l2_unrefined", "val_psnr", "val_msssim", "val_embed")


def run_training(config_path: str | Path, resume: bool = False, overrides: dict | None = None,
                 stop_at: int | None = None, export_only: bool = False) -> Iterator[Progress]:
    """Train from a YAML config, yielding progress after every step (see `train`)."""
    config = load_config(config_path, overrides)
    yield from train(config, resume=resume, stop_at=stop_at, export_only=export_only)


def train(config: TrainConfig, resume: bool = False, stop_at: int | None = None,
          export_only: bool = False) -> Iterator[Progress]:
    """Run the configured stage; yields Progress after every step, its ``info`` the loss parts and
    validation metrics logged at that step.

    ``stop_at`` ends the run after that step (after its checkpoint) as if it had been killed;
    ``export_only`` writes the model and card from the last checkpoint without training.
    """
    env = Distributed(config.run.device)
    try:
        yield from _train(config, env, resume or export_only, stop_at, export_only)
    finally:
        env.close()


def _train(config: TrainConfig, env: Distributed, resume: bool, stop_at: int | None,
           export_only: bool) -> Iterator[Progress]:
    out, ckpt_path = prepare_run(config.run.threads, config.seed, config.run.output_dir, resume)
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
    start, state = (_restore(ckpt_path, recipe, opt_g, opt_d, scaler) if resume else (0, {}))
    ema = EMA(model, config.optim.ema_decay) if config.optim.ema_decay else None
    if ema is not None:
        ema.restore(state)
    net = TrainingNet(model, config.stage, config.loss.unrefined_weight > 0).to(env.device)
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
    log = MetricsLog(out / METRICS, start, LOG_COLUMNS) if env.main else None

    def averaged():  # the EMA weights, where the run keeps an average
        return ema.applied(model) if ema is not None else contextlib.nullcontext()

    def export_now(steps: int) -> Path:
        with averaged():
            return export(recipe, config, out, train_set, val_set, log, steps, global_batch,
                          env.world)

    if export_only:
        if env.main:
            export_now(start)
        return
    autocast = autocast_context(env.device, precision)
    batches = iter(loader)

    def one_step(step: int, record) -> dict[str, float]:
        model.train()
        disc_on = disc is not None and step >= config.loss.adversarial.start_step
        opt_g.zero_grad(set_to_none=True)
        pairs = []
        for m in range(accumulation):
            x = next(batches).to(env.device)
            first = step * global_batch + (m * env.world + env.rank) * batch
            noise = None
            if config.stage != "stage2_2d" and config.model.trains != "refiner":  # the refiner
                # trains on the posterior mean, the latent the codec encodes
                latent_shape = (x.shape[0], model.latent_channels,
                                *(s // model.factor for s in x.shape[2:]))
                noise = posterior_noise(latent_shape, config.seed, first, env.device)
            sync = m == accumulation - 1
            with _no_sync(net, sync), autocast:
                outputs = net(x, noise)
                loss, logs = generator_loss(recipe, config, x, outputs, disc_on)
            with _no_sync(net, sync):
                scaler.scale(loss / accumulation).backward()
            record(logs)
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
                record({"disc": d_loss.item()})
            scaler.step(opt_d)
        scaler.update()
        if ema is not None:
            ema.update(model)
        return {}

    def save(done: int) -> None:
        _save_checkpoint(ckpt_path, done, recipe, opt_g, opt_d, scaler, global_batch, config, ema)

    def validate_now() -> dict[str, float]:
        with averaged():
            return validate(recipe, config, val_inputs, autocast)

    yield from step_loop(config.run, env, start, log, one_step, validate_now, save,
                         lambda: export_now(config.run.steps), stop_at)


def _no_sync(module, sync: bool):
    """DDP's no_sync on micro-steps that only accumulate (a no-op without DDP)."""
    if sync or not isinstance(module, DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


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


def _save_checkpoint(path: Path, step: int, recipe: Recipe, opt_g, opt_d, scaler, global_batch: int,
                     config: TrainConfig, ema: EMA | None) -> None:
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
        "rng": rng_states(),
        **(ema.state() if ema is not None else {}),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _restore(path: Path, recipe: Recipe, opt_g, opt_d, scaler) -> tuple[int, dict]:
    """Put the checkpoint's weights, optimiser, scaler and RNG states back; (its step, the whole
    state, for the weight average)."""
    state = load_checkpoint(path)
    if state.get("stage") != recipe.stage:
        raise MedVAEError(
            f"{path}: checkpoint is of {state.get('stage')}, the config says {recipe.stage}")
    recipe.model.load_state_dict(state["model"])
    if recipe.discriminator is not None:
        recipe.discriminator.load_state_dict(state["discriminator"])
        opt_d.load_state_dict(state["opt_d"])
    opt_g.load_state_dict(state["opt_g"])
    scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"])
    return int(state["step"]), state


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


def learning_rate(optim: OptimSection, step: int, total: int) -> float:
    """The generator learning rate at ``step``: linear warm-up, then constant or cosine decay."""
    floor = optim.lr * optim.min_lr_ratio if optim.schedule == "cosine" else optim.lr
    return warmup_cosine(step, total, optim.lr, optim.warmup_steps, floor)


def _recipe_lines(config: dict) -> list[str]:
    """What trained, the learning-rate schedule and the augmentation, from the card's config."""
    optim, data = config.get("optim"), config.get("data")
    lines = []
    model = config.get("model") or {}
    if model.get("trains") == "encoder":
        lines.append("- Trained: the encoder only (the decoder of the initial model, unchanged)")
    if model.get("trains") == "refiner":
        lines.append(f"- Trained: the learned latent refiner only ({model['refiner_steps']} steps; "
                     "the autoencoder of the initial model, unchanged)")
    unrefined = (config.get("loss") or {}).get("unrefined_weight")
    if unrefined:
        lines.append(f"- Trained: encoder, decoder and learned latent refiner together; the loss "
                     f"also scores the encoder's own latent (weight {unrefined:g}), as "
                     "`--no-refiner` decodes it")
    if optim:
        lines.append(f"- Learning rate: {optim['lr']:g}, {optim.get('schedule', 'constant')} schedule"
                     f" ({optim.get('warmup_steps', 0)} warm-up steps)")
        if optim.get("ema_decay"):
            lines.append(f"- Weights: exponential moving average, decay {optim['ema_decay']:g}")
    aug = (data or {}).get("augment")
    if aug:
        coarse = (f"; coarser voxels p={aug['coarsen']:g} (1-{aug.get('max_coarsen', 3)}x per axis)"
                  if aug.get("coarsen") else "")
        lines.append(f"- Augmentation: flips and quarter turns {'on' if aug['flips'] else 'off'}; "
                     f"contrast squeeze p={aug['contrast']:g} (sub-range >= {aug['min_range']:g})"
                     + coarse)
    if config.get("stage") == "stage2_3d" and data:
        lines.append(f"- Patches: {data['patch']}^3")
    elif data and data.get("crop"):
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
