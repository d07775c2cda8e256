"""Noise schedules: the cosine schedule (s = 0.008, 1000 steps) and latent-sr's flipped table.

Convention everywhere in this package: timestep ``t`` in 0..T-1 with ``alphas_cumprod[0]`` close
to 1 (almost clean) and ``alphas_cumprod[T-1]`` close to 0 (pure noise), as in DDPM. Models trained
with latent-sr's flipped convention are adapted at the model call (see ``Denoiser``), never here.
"""

from __future__ import annotations

import dataclasses
import math

import torch

TRAIN_STEPS = 1000
COSINE_S = 0.008
MAX_BETA = 0.999


def cosine_alpha_bar(u: torch.Tensor, s: float = COSINE_S) -> torch.Tensor:
    """The continuous cosine signal level f(u)/f(0), f(u) = cos((u + s)/(1 + s) * pi/2)^2."""
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Cumulative signal levels of a discrete diffusion (float64, index = timestep)."""

    alphas_cumprod: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def betas(self) -> torch.Tensor:
        previous = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        return 1 - self.alphas_cumprod / previous

    def at(self, t: torch.Tensor | int) -> torch.Tensor:
        """alpha_bar at integer timesteps; -1 means the clean end (alpha_bar = 1)."""
        t = torch.as_tensor(t, dtype=torch.long)
        padded = torch.cat([self.alphas_cumprod, self.alphas_cumprod.new_ones(1)])
        return padded[torch.where(t < 0, torch.full_like(t, self.steps), t)]


def cosine_schedule(steps: int = TRAIN_STEPS, s: float = COSINE_S) -> Schedule:
    """Nichol & Dhariwal's cosine schedule: betas from the alpha_bar ratios, capped at 0.999."""
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    levels = cosine_alpha_bar(u, s)
    betas = (1 - levels[1:] / levels[:-1]).clamp(max=MAX_BETA)
    return Schedule(torch.cumprod(1 - betas, dim=0))


def latent_sr_table(steps: int = TRAIN_STEPS, s: float = COSINE_S) -> torch.Tensor:
    """latent-sr's stored table: entry i is the uncapped cosine level at u = (T - i)/T.

    Entry 0 is pure noise and entry T-1 the cleanest level, the reverse of DDPM; float32 as they
    keep it in their checkpoints.
    """
    u = (steps - torch.arange(steps, dtype=torch.float64)) / steps
    return cosine_alpha_bar(u, s).float()
