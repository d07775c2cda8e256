"""Cancel inside one network call: a check before every module a model runs.

Long work is a generator, so a cancel normally takes effect at its next ``Progress`` step; one step
(a 3D window, a batch of large slices, a model load) can take many seconds. A job runner wraps its
steps in ``cancel_scope(event)``; while the event is set, any ``torch.nn.Module`` called in that
thread raises ``Cancelled`` before it runs, so a cancel waits for at most one module (one
convolution). Threads outside a scope are unaffected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from ..errors import Cancelled

_local = threading.local()
_installed: list[object] = []
_install_lock = threading.Lock()


def check_cancelled() -> None:
    """Raise Cancelled if the cancel event of this thread's scope is set."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("cancelled by the user")


def _before_module(_module, _inputs) -> None:
    check_cancelled()


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[None]:
    """Within this block (in this thread), every module call first checks ``event``."""
    with _install_lock:
        if not _installed:  # one process-wide hook; it does nothing outside a scope
            _installed.append(torch.nn.modules.module.register_module_forward_pre_hook(_before_module))
    previous, owner = getattr(_local, "event", None), threading.get_ident()
    _local.event = event
    try:
        yield
    finally:  # a generator holding the scope may be closed later by another thread
        if threading.get_ident() == owner:
            _local.event = previous
