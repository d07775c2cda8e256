"""Distributed set-up: this process's rank, world size and device under ``torchrun``."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

from ..errors import MedVAEError


def rank_device(device: str, env: Mapping[str, str] = os.environ) -> str:
    """The device this process uses: ``auto`` is CUDA when available, else CPU; a bare ``cuda`` is
    this process's GPU under torchrun (``cuda:LOCAL_RANK``); an explicit index and others unchanged."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{env['LOCAL_RANK']}" if device == "cuda" and "LOCAL_RANK" in env else device


class Distributed:
    """Rank, world size and device of this process (DDP set up when launched by torchrun)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        name = rank_device(device)
        use_cuda = name.startswith("cuda")
        if use_cuda and not torch.cuda.is_available():
            raise MedVAEError(f"run.device {device!r} requested but CUDA is not available")
        self.device = torch.device(name)
        if use_cuda:
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
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
