"""Encoder-side latent refinement: a few gradient steps on the latent so that the decoder reproduces
the image more closely.

The encoder is a one-pass guess of the latent; the decoder defines what a latent means. Starting
from the encoder's latent, Adam on the latent alone (the weights stay frozen) lowers the mean squared
error of the decoded image against the input in model space, i.e. raises its PSNR. The latent keeps
its size, so the compression ratio and the file format do not change and any decoder of the same
model reads it; the cost is time at encoding (each step is one decoder pass forward and back).
Neural image codecs do the same at encoding time (Campos et al. 2019, "Content adaptive
optimization for neural image compression"; Yang et al. 2020, "Improving inference for neural
image compression"). docs/training.md has what it gives the starters. A model may also carry a
learned refiner (models/refiner.py) that its encoder always runs; these steps come after it.
"""

from __future__ import annotations

import torch

from ..runtime.precision import autocast

REFINE_LR = 0.02  # Adam step on latents of unit scale: 30 steps take the 3D starter within 0.02 dB of 100


def refine_latent(model, x: torch.Tensor, z: torch.Tensor, steps: int, precision: str = "fp32",
                  lr: float = REFINE_LR, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``z`` after ``steps`` Adam steps on the mean squared error of ``model.decode(z)`` (channel
    mean) against ``x`` (B, 1, ...), over the voxels where ``weight`` is 1 (default all: 0 marks the
    codec's padding), per batch item the best iterate seen, so never worse than the given ``z``."""
    target = x.to(z.device, torch.float32)
    weight = torch.ones_like(target) if weight is None else weight.to(target)
    best = z.detach().clone().float()
    best_err = torch.full((len(z),), float("inf"), device=z.device)
    current = best.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([current], lr=lr)
    for step in range(steps + 1):
        with torch.enable_grad():
            with autocast(model, precision):
                y = model.decode(current)
            y = y.float().mean(dim=1, keepdim=True)
            err = ((y - target) ** 2 * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)
            better = err.detach() < best_err
            best_err = torch.where(better, err.detach(), best_err)
            best[better] = current.detach()[better]
            if step == steps:
                break
            (grad,) = torch.autograd.grad(err.sum(), current)
        current.grad = grad
        optimiser.step()
    return best


def learned_refiner_steps(model) -> int:
    """How many learned refiner steps (models/refiner.py) the model's encoder runs; 0 for models
    without one (the official ones, foreign VAEs, interpolation baselines)."""
    config = getattr(model, "config", None)
    return int(config.get("refiner_steps", 0)) if isinstance(config, dict) else 0
