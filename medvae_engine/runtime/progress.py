"""The one progress protocol: long work is a generator yielding ``Progress``; ``run`` drives it.

Training, super-resolution, dataset encoding, reader-study creation, CAD and benchmarks all yield
``Progress``; the CLI shows it with one tqdm driver and the plugin with one napari driver.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator

from ..errors import Cancelled


@dataclasses.dataclass(frozen=True)
class Progress:
    """One step of long work: ``done`` of ``total`` units in ``stage`` (encode or decode)."""

    done: int
    total: int
    stage: str


Steps = Generator[Progress, None, object]


def run(
    steps: Steps,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
):
    """Drive a ``*_steps`` generator to its result, reporting progress and honouring cancel."""
    try:
        while True:
            p = next(steps)
            if cancel is not None and cancel.is_set():
                steps.close()
                raise Cancelled("cancelled by the user")
            if progress is not None:
                progress(p)
    except StopIteration as stop:
        return stop.value
