"""Independent reference samplers written from the papers (DDIM, Song et al. 2021, eq. 12; DDPM
as DDIM with eta = 1; rectified-flow Euler), not from diffusers: the package samples through
diffusers' schedulers and the tests check both agree step for step."""

from __future__ import annotations

import torch

from medvae_engine.sr.objectives import to_x0_eps
from medvae_engine.sr.samplers import noise_like


def spaced_timesteps(steps: int, train_steps: int) -> torch.Tensor:
    """``steps`` timesteps from T-1 downwards, evenly spaced ("trailing": the first is T-1)."""
    grid = torch.arange(train_steps, 0, -train_steps / steps, dtype=torch.float64)[:steps]
    return grid.round().long() - 1


def ddim_reference(predict, shape, schedule, objective, steps, generator, eta=0.0):
    """DDIM over the trailing sub-sequence, each step to the next listed timestep."""
    ts = spaced_timesteps(steps, schedule.steps)
    z = noise_like(shape, generator)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else torch.tensor(-1)
        ab, ab_prev = schedule.at(t).float(), schedule.at(t_prev).float()
        x0, eps = to_x0_eps(objective, predict(z, t), z, ab)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
        direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt()
        z = ab_prev.sqrt() * x0 + direction * eps
        if sigma > 0:
            z = z + sigma * noise_like(shape, generator, like=z)
    return z


def flow_reference(predict, shape, steps, generator):
    """Euler steps of the velocity at t = i / steps from noise (t = 0) to data (t = 1)."""
    z = noise_like(shape, generator)
    for i in range(steps):
        z = z + predict(z, torch.tensor(i / steps, dtype=torch.float64)) / steps
    return z
