"""The one progress protocol: long work is a generator yielding ``Progress``; ``run`` drives it.

Training, super-resolution, dataset encoding, reader-study creation, CAD and benchmarks all yield
``Progress``; the CLI shows it with one tqdm driver and the plugin with one napari driver.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator, Mapping

from ..errors import Cancelled


@dataclasses.dataclass(frozen=True)
class Progress:
    """One step of long work: ``done`` of ``total`` units of the whole job, now in ``stage``.

    ``info`` carries what a display may show beside the bar (losses, metrics, the input's name);
    ``payload`` what the caller may act on (e.g. the latent an input was encoded to).
    """

    done: int
    total: int
    stage: str
    info: Mapping[str, float | str] = dataclasses.field(default_factory=dict)
    payload: object = None


Steps = Generator[Progress, None, object]


def rebased(steps: Steps, before: int, total: int, **info: float | str) -> Steps:
    """Re-yield a part's Progress as units ``before + done`` of a whole job of ``total`` units, with
    ``info`` added; return the part's result."""
    while True:
        try:
            p = next(steps)
        except StopIteration as stop:
            return stop.value
        yield dataclasses.replace(p, done=before + p.done, total=total, info={**info, **p.info})


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
