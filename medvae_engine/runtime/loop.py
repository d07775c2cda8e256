"""The step loop every training shares: preparation, LR schedule, checkpoint/resume, validation,
logging and export cadence, yielding ``Progress`` after every step.

A training supplies what differs as functions: one optimisation step, validation, writing its
checkpoint and exporting its model. The loop decides when each runs, so the AE and SR trainings
validate, log, checkpoint, stop and export at the same points.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import MedVAEError
from .distributed import Distributed
from .metrics_log import MetricsLog, run_folder
from .progress import Progress
from .seeding import seed_everything

Record = Callable[[Mapping[str, float]], None]


class Cadence(Protocol):
    """The ``run`` section of a training config: how long, and how often to act."""

    steps: int
    checkpoint_every: int
    val_every: int
    log_every: int


def prepare_run(threads: int | None, seed: int, output_dir: str, resume: bool) -> tuple[Path, Path]:
    """Thread count and seeds set, the run folder checked: (run folder, checkpoint path)."""
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    return run_folder(output_dir, resume)


def warmup_cosine(step: int, total: int, lr: float, warmup_steps: int = 0,
                  min_lr: float = 0.0) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, then cosine decay to ``min_lr`` at
    ``total`` (``min_lr == lr``: constant). A pure function of the step, so a resumed run follows
    the same schedule without stored state."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return min_lr + (lr - min_lr) * cosine


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint's state (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MedVAEError(f"{path}: unreadable training checkpoint ({str(e)[:160]})") from None


def step_loop(
    run: Cadence,
    env: Distributed,
    start: int,
    log: MetricsLog | None,
    step: Callable[[int, Record], Mapping[str, float]],
    validate: Callable[[], Mapping[str, float]],
    save: Callable[[int], None],
    export: Callable[[], object],
    stop_at: int | None = None,
) -> Iterator[Progress]:
    """Run steps ``start`` .. ``run.steps - 1``, yielding Progress(done, steps, "train", info=row).

    ``step(i, record)`` does optimisation step ``i``, passing its losses to ``record`` (averaged
    over the log window) and returning values logged as they are (e.g. the learning rate). Rank 0
    validates every ``val_every`` steps and logs every ``log_every`` (and at the end); every rank
    checkpoints every ``checkpoint_every`` steps, at the end and at ``stop_at``, where the run
    stops as if killed. After the last step rank 0 exports.
    """
    window: dict[str, list[float]] = {}

    def record(values: Mapping[str, float]) -> None:
        for k, v in values.items():
            window.setdefault(k, []).append(v)

    t0 = time.monotonic()
    for index in range(start, run.steps):
        current = step(index, record)
        done = index + 1
        row: dict[str, float] = {}
        if env.main and (done % run.val_every == 0 or done == run.steps):
            row.update(validate())
        if env.main and (done % run.log_every == 0 or done == run.steps or row):
            row.update({k: float(np.mean(v)) for k, v in window.items()})
            row.update(current)
            log.write(done, time.monotonic() - t0, row)
            window.clear()
        if done % run.checkpoint_every == 0 or done == run.steps or done == stop_at:
            if env.main:
                save(done)
            env.barrier()
        yield Progress(done, run.steps, "train", info=row)
        if stop_at is not None and done >= stop_at:
            return
    if env.main:
        export()
    env.barrier()
