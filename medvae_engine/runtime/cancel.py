"""Cancel inside one network call: a check before every torch operation, large ones in slabs.

Long work is a generator, so a cancel normally takes effect at its next ``Progress`` step; one step
(a 3D window, a batch of large slices, a model load) can take minutes. A job runner runs its steps
through ``cancellable(steps, event)`` (or wraps work in ``cancel_scope(event)``); while the event is
set, any torch operation called in that thread raises ``Cancelled`` before it runs, and a large
convolution, GroupNorm or elementwise map runs in slabs with a check between them
(``runtime/slabs.py``), so a cancel waits for at most one slab. Threads outside a scope are
unaffected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator

from ..errors import Cancelled
from .slabs import SlabMode

_local = threading.local()


def check_cancelled() -> None:
    """Raise Cancelled if the cancel event of this thread's scope is set."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("cancelled by the user")


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[None]:
    """Within this block (in this thread), every torch operation first checks ``event``; enter and
    leave it in the same thread (``cancellable`` does so for a generator)."""
    previous = getattr(_local, "event", None)
    _local.event = event
    try:
        with SlabMode(check_cancelled):
            yield
    finally:
        _local.event = previous


def cancellable(steps: Generator, event: threading.Event) -> Generator:
    """``steps`` with every resumption run inside ``cancel_scope(event)``: the scope never stays
    open across a yield, so it is always left in the thread that entered it, even when the
    generator is closed later from another thread."""
    try:
        while True:
            with cancel_scope(event):
                try:
                    step = next(steps)
                except StopIteration as stop:
                    return stop.value
            yield step
    finally:
        steps.close()
