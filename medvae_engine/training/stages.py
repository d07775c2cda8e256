"""The three MedVAE training recipes: what is built, what trains and which losses apply.

- stage1 (2D): L1 + perceptual + KL + PatchGAN hinge loss with the adaptive weight (after a delayed
  start) + optional embedding consistency; all weights train, or only LoRA of rank r.
- stage2_2d: the autoencoder frozen; the projection head learns to keep the frozen image encoder's
  embedding of the latent (divided by ``latent_scale``, channel mean, resized) close to the image's.
- stage2_3d: a 2D checkpoint inflated to 3D (kernel centering), stage-1 losses on random cubes with
  perceptual and adversarial terms averaged over every 2D slice along the three axes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..models.autoencoder import AutoencoderKL
from ..models.checkpoints import inflate_state_dict, load_strict, model_from_checkpoint
from ..models.loading import load_model
from ..models.lora import LoRAConv, inject_lora
from ..models.zoo import MODELS
from .config import TrainConfig, adversarial_runs, resolve_path
from .embedders import ImageEmbedder, build_embedder
from .losses import (
    PatchDiscriminator,
    adaptive_weight,
    all_slices,
    build_perceptual,
    hinge_d_loss,
    kl_loss,
)

PROJECTION_PREFIXES = ("channel_ds.", "channel_proj.")
DECODER_PREFIXES = ("post_quant_conv.", "decoder.")


@dataclasses.dataclass
class Recipe:
    """Everything a stage trains with."""

    stage: str
    model: AutoencoderKL
    trainable: list[nn.Parameter]
    discriminator: PatchDiscriminator | None
    perceptual: nn.Module | None
    embedder: ImageEmbedder | None
    init: str


def initial_model(config: TrainConfig) -> tuple[AutoencoderKL, str]:
    """The starting autoencoder: fresh (seeded), a zoo model or a checkpoint (official or ours)."""
    m = config.model
    if m.init == "scratch":
        torch.manual_seed(config.seed)
        model = AutoencoderKL(m.spatial_dims, m.in_channels, m.in_channels, m.ch, tuple(m.ch_mult),
                              m.num_res_blocks, m.z_channels, projection=True,
                              norm_groups=m.norm_groups, shortcut=m.shortcut,
                              refiner_steps=m.refiner_steps)
        return model, "scratch"
    if m.init in MODELS:
        model, init = load_model(m.init), m.init
        if not isinstance(model, AutoencoderKL):
            raise ModelError(f"{m.init}: not a MedVAE autoencoder")
    else:
        path = resolve_path(config, m.init)
        (model, _), init = model_from_checkpoint(path), str(path)
    if m.shortcut and not model.shortcut:
        if m.trains == "encoder":
            raise ModelError(f"{m.init}: giving it the shortcut restarts the decoder's output layer "
                             "from zero, so model.trains must be 'all'")
        model = add_shortcut(model)
    has = model.config.get("refiner_steps", 0)  # headers written before refiners lack the key
    if m.refiner_steps != has:
        if has:
            raise ModelError(f"{m.init}: has a learned refiner of {has} steps; "
                             f"model.refiner_steps asks for {m.refiner_steps}")
        torch.manual_seed(config.seed)
        model = add_refiner(model, m.refiner_steps)
    return model, init


def add_shortcut(model: AutoencoderKL) -> AutoencoderKL:
    """The same weights with the interpolation shortcut, restarted at interpolation (the layers
    writing the latent mean and the image zeroed; every feature before them kept)."""
    out = AutoencoderKL(**dict(model.config, shortcut=True))
    load_strict(out, model.state_dict(), "model given a shortcut")
    out.start_at_interpolation()
    return out


def add_refiner(model: AutoencoderKL, steps: int) -> AutoencoderKL:
    """The same autoencoder with a new learned latent refiner of ``steps`` steps, which starts as
    plain sign-gradient steps (its networks' output layers are zero)."""
    out = AutoencoderKL(**dict(model.config, refiner_steps=steps))
    fresh = {f"refiner.{k}": v for k, v in out.refiner.state_dict().items()}
    load_strict(out, {**model.state_dict(), **fresh}, "model given a refiner")
    return out


def inflate_to_3d(model: AutoencoderKL) -> AutoencoderKL:
    """A 3D autoencoder whose kernels are the 2D ones centred in depth."""
    config = dict(model.config, spatial_dims=3)
    model3 = AutoencoderKL(**config)
    load_strict(model3, inflate_state_dict(model.state_dict()), "inflated 2D model")
    return model3


def build_recipe(config: TrainConfig, device: torch.device) -> Recipe:
    """Model, trainable parameters and loss modules of the configured stage."""
    model, init = initial_model(config)
    if config.stage == "stage2_3d" and model.spatial_dims == 2:
        model = inflate_to_3d(model)
    expected = 3 if config.stage == "stage2_3d" else 2
    if model.spatial_dims != expected:
        raise ModelError(
            f"{init}: {config.stage} needs a {expected}D model, got {model.spatial_dims}D")
    model.requires_grad_(False)
    if config.stage == "stage2_2d":
        if not hasattr(model, "channel_proj"):
            raise ModelError(f"{init}: the model has no projection head to train")
        trainable = [p for n, p in model.named_parameters() if n.startswith(PROJECTION_PREFIXES)]
    elif config.model.trains == "refiner":
        trainable = list(model.refiner.parameters())
    elif config.model.lora_rank > 0:
        trainable = inject_lora(model, config.model.lora_rank)
    else:
        frozen = PROJECTION_PREFIXES + (DECODER_PREFIXES if config.model.trains == "encoder" else ())
        trainable = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    for p in trainable:
        p.requires_grad_(True)
    perceptual = disc = None
    if config.stage != "stage2_2d":
        pc = config.loss.perceptual
        perceptual = build_perceptual(
            pc.kind, resolve_path(config, pc.weights) if pc.weights else None,
            resolve_path(config, pc.heads) if pc.heads else None)
        adv = config.loss.adversarial
        if adversarial_runs(config):
            torch.manual_seed(config.seed + 1)
            disc = PatchDiscriminator(model.out_channels, adv.channels, adv.layers)
    emb = config.embedder
    embedder = build_embedder(emb.kind, resolve_path(config, emb.path) if emb.path else None,
                              emb.target, emb.size)
    modules = [model, disc, perceptual, embedder]
    for module in modules:
        if module is not None:
            module.to(device)
    return Recipe(config.stage, model, trainable, disc, perceptual, embedder, init)


class TrainingNet(nn.Module):
    """The differentiable forward of a stage (what DDP wraps).

    stage1 / stage2_3d: (reconstruction from a posterior sample, mean, logvar), the mean refined
    by the model's learned refiner if it has one; with ``unrefined``, also the reconstruction from
    the sample around the encoder's own mean (what `--no-refiner` decodes);
    stage2_2d: (projected latent, ) from the frozen encoder's posterior mean.
    """

    def __init__(self, model: AutoencoderKL, stage: str, unrefined: bool = False):
        super().__init__()
        self.model = model
        self.stage = stage
        self.unrefined = unrefined

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        if self.stage == "stage2_2d":
            with torch.no_grad():
                z = self.model.encode(x)
            return (self.model.project(z),)
        own, logvar = self.model.moments(x)
        mean = self.model.refine(x, own)

        def sample(m: torch.Tensor) -> torch.Tensor:
            return m if noise is None else m + torch.exp(0.5 * logvar) * noise.to(m.dtype)

        outputs = (self.model.decode(sample(mean)), mean, logvar)
        return outputs + (self.model.decode(sample(own)),) if self.unrefined else outputs


def posterior_noise(shape: tuple[int, ...], seed: int, first_index: int,
                    device: torch.device) -> torch.Tensor:
    """Per-sample noise seeded by the sample's global index (independent of the batch split)."""
    parts = [torch.randn(shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
             for i in range(first_index, first_index + shape[0])]
    return torch.stack(parts).to(device)


def last_trainable_layer(model: AutoencoderKL) -> torch.Tensor:
    """The decoder's last trainable weight, where the adaptive adversarial weight is measured."""
    conv_out = model.decoder.conv_out
    if conv_out.weight.requires_grad:
        return conv_out.weight
    last = model.decoder.up[0].block[-1].conv2
    if isinstance(last, LoRAConv):
        return last.lora_up.weight
    raise ModelError("no trainable decoder layer for the adaptive adversarial weight")


def generator_loss(recipe: Recipe, config: TrainConfig, x: torch.Tensor, outputs: tuple,
                   disc_on: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage's training loss for one micro-batch and its logged parts."""
    if recipe.stage == "stage2_2d":
        latent = outputs[0].float() / config.loss.latent_scale
        with torch.no_grad():
            target = recipe.embedder(x)
        embed = (recipe.embedder(latent) - target).pow(2).mean()
        return embed, {"embed": embed.item(), "loss": embed.item()}
    xr, mean, logvar, *unrefined = outputs
    loss_cfg = config.loss
    diff = x.float() - xr.float()
    l1 = diff.abs().mean()
    rec = loss_cfg.l1_weight * l1
    logs = {"l1": l1.item()}
    if loss_cfg.l2_weight > 0:
        l2 = diff.pow(2).mean()
        rec = rec + loss_cfg.l2_weight * l2
        logs["l2"] = l2.item()
    if unrefined:
        l2_own = (x.float() - unrefined[0].float()).pow(2).mean()
        rec = rec + loss_cfg.unrefined_weight * l2_own
        logs["l2_unrefined"] = l2_own.item()
    if recipe.perceptual is not None and loss_cfg.perceptual.weight > 0:
        pairs = zip(all_slices(x), all_slices(xr), strict=True)
        perceptual = torch.stack([recipe.perceptual(a, b).float().mean() for a, b in pairs]).mean()
        rec = rec + loss_cfg.perceptual.weight * perceptual
        logs["perceptual"] = perceptual.item()
    kl = kl_loss(mean, logvar)
    # The official loss sums the reconstruction term over pixels; ours averages it, so the KL is
    # divided by the elements per sample to keep the official weight's meaning (1e-6 stays 1e-6).
    total = rec + loss_cfg.kl_weight * kl / x[0].numel()
    logs["kl"] = kl.item()
    if recipe.embedder is not None and loss_cfg.embedding_weight > 0 and x.ndim == 4:
        with torch.no_grad():
            target = recipe.embedder(x)
        embed = (recipe.embedder(xr) - target).pow(2).mean()
        total = total + loss_cfg.embedding_weight * embed
        logs["embed"] = embed.item()
    if disc_on:
        disc = recipe.discriminator
        disc.requires_grad_(False)
        g_adv = -torch.stack([disc(s).float().mean() for s in all_slices(xr)]).mean()
        disc.requires_grad_(True)
        d_weight = adaptive_weight(rec, g_adv, last_trainable_layer(recipe.model),
                                   loss_cfg.adversarial.weight)
        total = total + d_weight * g_adv
        logs.update(g_adv=g_adv.item(), d_weight=d_weight.item())
    logs["loss"] = total.item()
    return total, logs


def discriminator_loss(disc: nn.Module, x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the (possibly DDP-wrapped) discriminator on real and reconstructed slices."""
    losses = [hinge_d_loss(disc(a), disc(b)) for a, b in zip(all_slices(x), all_slices(xr.detach()),
                                                             strict=True)]
    return torch.stack(losses).mean()


def embedding_distance(recipe: Recipe, config: TrainConfig, x: torch.Tensor) -> float:
    """Stage-2 validation: embedding distance between the image and its projected latent."""
    latent = recipe.model.project(recipe.model.encode(x)).float() / config.loss.latent_scale
    return F.mse_loss(recipe.embedder(latent), recipe.embedder(x)).item()
