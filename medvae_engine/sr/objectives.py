"""What the denoiser predicts and how training pairs are made.

Diffusion objectives (DDPM convention, ``ab`` = alpha_bar at the timestep):
``x0`` (the clean latent, latent-sr's choice and the default), ``epsilon`` (the noise) and ``v``
(sqrt(ab)*noise - sqrt(1-ab)*x0). ``flow`` is rectified flow: z_t = (1-t)*noise + t*x0 with t in
[0, 1] (t = 1 is data) and the velocity x0 - noise as target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIFFUSION_OBJECTIVES = ("x0", "epsilon", "v")
OBJECTIVES = (*DIFFUSION_OBJECTIVES, "flow")
LOSSES = ("l1", "l2")


def _view(level: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample scalars shaped to broadcast over (B, C, H, W)."""
    level = torch.as_tensor(level, dtype=like.dtype, device=like.device)
    return level.reshape(-1, *([1] * (like.ndim - 1)))


def diffuse(x0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The noisy latent z_t = sqrt(ab)*x0 + sqrt(1-ab)*noise."""
    ab = _view(ab, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def diffusion_target(objective: str, x0: torch.Tensor, noise: torch.Tensor,
                     ab: torch.Tensor) -> torch.Tensor:
    """What a perfect model of ``objective`` outputs for this (x0, noise, ab)."""
    if objective == "x0":
        return x0
    if objective == "epsilon":
        return noise
    if objective == "v":
        ab = _view(ab, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0
    raise ValueError(f"objective must be one of {DIFFUSION_OBJECTIVES}, got {objective!r}")


def to_x0_eps(objective: str, prediction: torch.Tensor, z: torch.Tensor,
              ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, noise) implied by a model output at the noisy latent ``z``.

    Computed in float64: near pure noise sqrt(ab) is ~5e-5 and float32 cancellation would swamp
    the epsilon -> x0 conversion.
    """
    dtype = prediction.dtype
    pred, z = prediction.double(), z.double()
    ab = _view(ab, z)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    if objective == "x0":
        x0, eps = pred, (z - a * pred) / b
    elif objective == "epsilon":
        x0, eps = (z - b * pred) / a, pred
    elif objective == "v":
        x0, eps = a * z - b * pred, b * z + a * pred
    else:
        raise ValueError(f"objective must be one of {DIFFUSION_OBJECTIVES}, got {objective!r}")
    return x0.to(dtype), eps.to(dtype)


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rectified-flow point z_t = (1-t)*noise + t*x0."""
    t = _view(t, x0)
    return (1 - t) * noise + t * x0


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The constant rectified-flow velocity x0 - noise."""
    return x0 - noise


def regression_loss(kind: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 (default, as latent-sr) or squared error."""
    if kind == "l1":
        return F.l1_loss(prediction.float(), target.float())
    if kind == "l2":
        return F.mse_loss(prediction.float(), target.float())
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
