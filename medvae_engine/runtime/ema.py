"""An exponential moving average of a model's weights, for validation and export: the average of
the late iterates of a noisy run generalises better than its last one (Polyak averaging)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """Shadow weights updated after each optimiser step with decay min(decay, (1+n)/(10+n)), so
    the first updates follow the weights closely (the warm-up of the EMA in latent-diffusion)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.shadow[k].copy_(v)

    def state(self) -> dict:
        """What a checkpoint keeps to resume the average exactly."""
        return {"ema": self.shadow, "ema_updates": self.updates}

    def restore(self, state: dict) -> None:
        """Resume from ``state()`` (a checkpoint written without an EMA leaves it as it is)."""
        if "ema" in state:  # on the model's device (checkpoints may be read onto the CPU)
            self.shadow = {k: v.to(self.shadow[k].device) for k, v in state["ema"].items()}
            self.updates = int(state["ema_updates"])

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The EMA weights inside the block, the training weights restored after it."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(live)
