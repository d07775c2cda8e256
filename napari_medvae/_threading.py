"""Engine generators -> napari thread workers with a progress bar and Cancel.

An engine ``*_steps`` generator yields ``Progress`` and returns its result; `start_job` runs it in a
``thread_worker`` (or synchronously when ``NAPARI_MEDVAE_SYNC=1``, for deterministic tests), shows a
napari progress bar, hands the result to ``on_done`` in the GUI thread and turns user-facing engine
errors into notifications. ``on_done`` may return an iterator of GUI steps (one layer each); they
run one per event-loop turn so adding several large layers never freezes the GUI in one block.
Cancel stops at the next step, or inside a model call before its next torch operation or slab of
a large one (``cancellable``, ``runtime/slabs.py``), and ``on_done`` is never called, so no
half-made layers appear.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from psygnal import evented

from medvae_engine.errors import Cancelled, MedVAEError
from medvae_engine.runtime.cancel import cancellable
from medvae_engine.runtime.progress import Progress

SYNC_ENV = "NAPARI_MEDVAE_SYNC"


@evented
@dataclass
class JobState:
    """What a widget shows about its running job."""

    running: bool = False
    label: str = ""
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass
class Job:
    """A started job: cancel it, or wait for it in tests via ``worker``."""

    state: JobState
    worker: object | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    worker_thread: list = field(default_factory=list)  # ids of the threads that ran steps

    def cancel(self) -> None:
        """Stop at the next progress step or module call; nothing is added."""
        self.cancel_event.set()
        if self.worker is not None:
            self.worker.quit()


def then(steps: Generator[Progress, None, object], fn: Callable[[object], object]):
    """``steps`` followed by ``fn(result)`` in the same (worker) thread, e.g. building layer data."""
    result = yield from steps
    return fn(result)


def sync_mode() -> bool:
    """True when jobs run in the calling thread (``NAPARI_MEDVAE_SYNC=1``)."""
    return os.environ.get(SYNC_ENV, "") not in ("", "0")


def start_job(
    steps: Generator[Progress, None, object],
    on_done: Callable[[object], None],
    state: JobState,
    label: str,
) -> Job:
    """Run ``steps`` in the background (or synchronously) with progress, cancel and error display."""
    job = Job(state)
    state.label, state.done, state.total, state.message = label, 0, 0, "starting"
    state.running = True
    bar = progress(total=0, desc=label)

    ended: list[bool] = []

    def show(p: Progress) -> None:
        if ended:  # a late progress signal after the job ended
            return
        state.done, state.total, state.message = p.done, p.total, p.stage
        # napari's progress bar may process Qt events (and so end this job) while updating
        bar.total, bar.n = p.total, p.done
        bar.set_description(f"{label}: {p.stage}")
        if not ended:
            bar.refresh()

    def finish(message: str) -> None:
        ended.append(True)
        bar.close()
        state.message = message  # before running flips, so listeners of running see the outcome
        state.running = False

    def done(result: object) -> None:
        try:
            gui_steps = on_done(result)  # adds the layers; the job counts as done only afterwards
        except Exception as e:  # shown as one line, the job ends as failed
            failed(e)
            return
        if isinstance(gui_steps, Iterator) and not sync_mode():
            _one_per_event_loop_turn(gui_steps, lambda: finish("done"), failed)
            return
        for _ in gui_steps if isinstance(gui_steps, Iterator) else ():
            pass
        finish("done")

    def failed(exc: BaseException) -> None:
        finish("cancelled" if isinstance(exc, Cancelled) else "failed")
        if isinstance(exc, Cancelled):
            show_info(f"{label}: cancelled")
        elif isinstance(exc, MedVAEError):
            show_error(str(exc))
        else:
            show_error(f"{label} failed: {type(exc).__name__}: {exc}")

    def tracked() -> Generator[Progress, None, object]:
        job.worker_thread.append(threading.get_ident())
        # cancel also inside one model call, between its operations and slabs
        result = yield from cancellable(steps, job.cancel_event)
        return result

    if sync_mode():
        _run_sync(tracked(), show, job.cancel_event, done, failed)
        return job
    job.worker = _threaded(tracked(), show, job.cancel_event, done, failed)
    return job


GUI_STEP_GAP_MS = 15  # between two GUI steps: the repaint and any input run in between


def _one_per_event_loop_turn(gui_steps: Iterator, finished, failed) -> None:
    """Advance ``gui_steps`` one step per Qt event-loop turn, each after a short gap, so the GUI
    repaints and handles input between steps (a zero-delay timer ran the next step before them:
    adding a layer, its first paint and the next layer in one stall)."""
    from qtpy.QtCore import QTimer  # Qt: imported when a viewer is used

    def advance() -> None:
        try:
            next(gui_steps)
        except StopIteration:
            finished()
            return
        except Exception as e:  # shown as one line, the job ends as failed
            failed(e)
            return
        QTimer.singleShot(GUI_STEP_GAP_MS, advance)

    QTimer.singleShot(GUI_STEP_GAP_MS, advance)  # not in the turn that created the layers


def _run_sync(steps, show, cancel_event, done, failed) -> None:
    try:
        while True:
            p = next(steps)
            if cancel_event.is_set():
                steps.close()
                raise Cancelled("cancelled by the user")
            show(p)
    except StopIteration as stop:
        done(stop.value)
    except Exception as e:  # shown to the user as one line, never a traceback
        failed(e)


def _threaded(steps, show, cancel_event, done, failed):
    from napari.qt.threading import thread_worker  # napari starts Qt: imported when a viewer is used

    @thread_worker(start_thread=False, ignore_errors=True)  # errors go to ``failed``, not re-raised
    def work():
        result = yield from steps
        return result

    worker = work()
    worker.yielded.connect(show)
    worker.returned.connect(lambda result: None if cancel_event.is_set() else done(result))
    worker.errored.connect(failed)
    worker.aborted.connect(steps.close)  # runs the steps' cleanup (temporary files, locks) now
    worker.aborted.connect(lambda: failed(Cancelled("cancelled by the user")))
    worker.start()
    return worker
