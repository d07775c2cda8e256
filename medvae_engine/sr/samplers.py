"""Samplers from noise to an HR latent: ancestral DDPM, DDIM (eta) and rectified-flow Euler through
diffusers' schedulers, and the latent-sr published sampler (ours, for their released weights).

Every sampler is a generator yielding the number of model calls done and returning the latent;
``predict(z, t)`` is the conditioned model (DDPM-convention integer timesteps for diffusion, times
in [0, 1] for flow). Noise is drawn on the CPU from ``generator`` so results do not depend on the
device. Any step count from 1 to the training steps works; the last diffusion step always lands on
the clean end, so a perfect x0 predictor returns x0 exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

from .objectives import DIFFUSION_OBJECTIVES, to_x0_eps
from .schedules import Schedule, latent_sr_table

SAMPLERS = ("ddpm", "ddim", "flow", "latent-sr")
DEFAULT_STEPS = {"ddpm": 100, "ddim": 50, "flow": 16, "latent-sr": 50}
LATENT_SR_INIT_STD = 0.5
LATENT_SR_EPS = 1e-4  # their guard in the noise estimate

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Steps = Generator[int, None, torch.Tensor]
Generators = torch.Generator | list[torch.Generator]


def noise_like(shape: tuple[int, ...], generator: Generators, like: torch.Tensor | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise drawn on the CPU (device-independent), then moved.

    A list of generators draws item i of the batch from generator i, so a sample does not depend
    on which batch it was part of.
    """
    if isinstance(generator, torch.Generator):
        n = torch.randn(shape, generator=generator, dtype=torch.float32)
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        n = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32)
                         for g in generator])
    return n.to(like.device if like is not None else device)


PREDICTION_TYPES = {"x0": "sample", "epsilon": "epsilon", "v": "v_prediction"}  # ours -> diffusers


def diffusers_scheduler(sampler: str, schedule: Schedule, objective: str, steps: int):
    """The diffusers scheduler for ``sampler`` on our schedule (betas passed as trained_betas):
    DDPMScheduler (posterior variance) or DDIMScheduler, both with trailing timestep spacing (the
    first step at T-1, the last one reaching the clean end when ``steps`` divides T)."""
    from diffusers import DDIMScheduler, DDPMScheduler  # heavy: imported on use

    _check_diffusion(objective, sampler)
    if not 1 <= steps <= schedule.steps:
        raise ValueError(f"steps must be between 1 and {schedule.steps}, got {steps}")
    common = {"num_train_timesteps": schedule.steps, "trained_betas": schedule.betas.numpy(),
              "prediction_type": PREDICTION_TYPES[objective], "clip_sample": False,
              "timestep_spacing": "trailing"}
    if sampler == "ddpm":
        scheduler = DDPMScheduler(variance_type="fixed_small", **common)
    else:
        scheduler = DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common)
    scheduler.set_timesteps(steps)
    return scheduler


def ddim_steps(predict: Predict, shape: tuple[int, ...], schedule: Schedule, objective: str,
               steps: int, generator: Generators, eta: float = 0.0,
               device: torch.device | str = "cpu") -> Steps:
    """DDIM through diffusers' DDIMScheduler with stochasticity ``eta`` (0: deterministic).

    Returns the last step's x0 estimate, which is the last step's output whenever that step
    reaches the clean end and the clean end otherwise (step counts that do not divide T).
    """
    scheduler = diffusers_scheduler("ddim", schedule, objective, steps)
    z = noise_like(shape, generator, device=device)
    for i, t in enumerate(scheduler.timesteps):
        noise = noise_like(shape, generator, like=z) if eta > 0 else None
        out = scheduler.step(predict(z, t), t, z, eta=eta, variance_noise=noise)
        z = out.prev_sample
        yield i + 1
    return out.pred_original_sample


def ddpm_steps(predict: Predict, shape: tuple[int, ...], schedule: Schedule, objective: str,
               steps: int, generator: Generators, device: torch.device | str = "cpu") -> Steps:
    """Ancestral DDPM through diffusers' DDPMScheduler: the posterior q(z_prev | z_t, x0) sampled
    at every (possibly skipped) step; returns the last step's x0 estimate (= its mean)."""
    scheduler = diffusers_scheduler("ddpm", schedule, objective, steps)
    z = noise_like(shape, generator, device=device)
    for i, t in enumerate(scheduler.timesteps):
        out = scheduler.step(predict(z, t), t, z, generator=generator)
        z = out.prev_sample
        yield i + 1
    return out.pred_original_sample


def flow_steps(predict: Predict, shape: tuple[int, ...], steps: int, generator: Generators,
               device: torch.device | str = "cpu") -> Steps:
    """Euler integration of the rectified-flow velocity from noise (t = 0) to data (t = 1) through
    diffusers' FlowMatchEulerDiscreteScheduler (its sigma is our 1 - t and its velocity our
    negated one), at the times i / steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler  # heavy: imported on use

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=[1 - i / steps for i in range(steps)])
    z = noise_like(shape, generator, device=device)
    for i, timestep in enumerate(scheduler.timesteps):
        velocity = predict(z, torch.tensor(i / steps, dtype=torch.float64))
        z = scheduler.step(-velocity, timestep, z).prev_sample
        yield i + 1
    return z


def latent_sr_steps(predict: Predict, shape: tuple[int, ...], schedule: Schedule, objective: str,
                    steps: int, generator: Generators, table: torch.Tensor | None = None,
                    device: torch.device | str = "cpu") -> Steps:
    """latent-sr's published sampler, reproduced for their released weights.

    It starts from 0.5 * N(0, I) and walks only the first ``steps`` entries of the 1000-entry
    flipped table (entry i = timestep T-1-i here, i.e. from pure noise towards less noise but
    stopping early when steps < 1000), with a deterministic x0/noise update between entries, and
    returns the model's x0 at the last entry visited.
    """
    _check_diffusion(objective, "latent-sr")
    table = latent_sr_table(schedule.steps) if table is None else table.float()
    if not 1 <= steps <= table.numel():
        raise ValueError(f"steps must be between 1 and {table.numel()}, got {steps}")
    z = LATENT_SR_INIT_STD * noise_like(shape, generator, device=device)
    last = schedule.steps - 1
    for i in range(steps - 1):
        a, a_next = table[i], table[i + 1]
        x0, _ = to_x0_eps(objective, predict(z, torch.tensor(last - i)), z, schedule.at(last - i))
        eps = (z - a.sqrt() * x0) / ((1 - a).sqrt() + LATENT_SR_EPS)
        z = z + (a_next.sqrt() - a.sqrt()) * x0 + ((1 - a_next).sqrt() - (1 - a).sqrt()) * eps
        yield i + 1
    t = torch.tensor(last - (steps - 1))
    x0, _ = to_x0_eps(objective, predict(z, t), z, schedule.at(t))
    yield steps
    return x0


def sample_steps(sampler: str, predict: Predict, shape: tuple[int, ...], schedule: Schedule,
                 objective: str, steps: int, generator: Generators, eta: float = 0.0,
                 table: torch.Tensor | None = None, device: torch.device | str = "cpu") -> Steps:
    """Dispatch to one sampler by name (``SAMPLERS``)."""
    if sampler == "ddpm":
        return ddpm_steps(predict, shape, schedule, objective, steps, generator, device)
    if sampler == "ddim":
        return ddim_steps(predict, shape, schedule, objective, steps, generator, eta, device)
    if sampler == "flow":
        if objective != "flow":
            raise ValueError(f"the flow sampler needs a flow-matching model, this one predicts "
                             f"{objective}")
        return flow_steps(predict, shape, steps, generator, device)
    if sampler == "latent-sr":
        return latent_sr_steps(predict, shape, schedule, objective, steps, generator, table, device)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def _check_diffusion(objective: str, sampler: str) -> None:
    if objective not in DIFFUSION_OBJECTIVES:
        raise ValueError(f"the {sampler} sampler needs a diffusion model (x0, epsilon or v); this "
                         f"one is a {objective} model: use --sampler flow")


def run_sampler(steps: Steps) -> torch.Tensor:
    """Drain a sampler generator and return its latent."""
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        return stop.value
