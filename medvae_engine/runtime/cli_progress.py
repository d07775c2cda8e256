"""The one command-line driver of long work: a tqdm bar on stderr with done/total, rate and ETA.

Every long CLI job (codec, training, SR, dataset encoding, reader-study creation, CAD, benchmarks)
drives its ``Progress`` generator through `drive`. In a terminal the bar redraws at most once a
second; in a log (stderr not a terminal) it prints a line when the first unit is done, at most
once a minute and at the end, so the ETA shows from the first unit on. Under torchrun only rank 0
draws.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

from tqdm import tqdm

from .progress import Progress, Steps, run

TERMINAL_INTERVAL = 1.0  # seconds between redraws in a terminal
LOG_INTERVAL = 60.0  # seconds between lines when stderr is a file or a pipe


def drive(
    steps: Steps,
    desc: str,
    *,
    unit: str = "step",
    keys: Sequence[str] | None = None,
    report: Callable[[Progress], None] | None = None,
    terminal_only: bool = False,
    cancel: threading.Event | None = None,
) -> object:
    """Run ``steps`` to its result with a progress bar; ``report`` sees every Progress too.

    The bar shows the ``info`` entries named in ``keys`` (all when None) beside it, and the stage
    unless ``desc`` already ends with it. ``terminal_only``: no bar unless stderr is a terminal (for
    commands whose output is often piped, like encode and decode).
    """
    tty = sys.stderr.isatty()
    shown = os.environ.get("RANK", "0") == "0" and (tty or not terminal_only)
    began = time.time()
    state: dict[str, object] = {}

    def show(p: Progress) -> None:
        if report is not None:
            report(p)
        if not shown:
            return
        bar = state.get("bar")
        if bar is None:  # at the first step: the total is known, a resumed run starts part-done
            bar = state["bar"] = tqdm(
                total=p.total, initial=max(0, p.done - 1), desc=desc, unit=unit,
                unit_scale=unit == "B", dynamic_ncols=True, file=sys.stderr,
                mininterval=TERMINAL_INTERVAL if tty else LOG_INTERVAL, leave=not terminal_only)
            bar.start_t = bar.last_print_t = began  # the rate counts from the start of the job
        if p.done < bar.n:  # a new stage counting from its own start: time it afresh
            bar.initial = 0
            bar.reset(total=p.total)
            state["timed"] = False
        if p.total != bar.total:
            bar.total = p.total
        label = desc if not p.stage or desc.endswith(p.stage) else f"{desc}: {p.stage}"
        if label != bar.desc:
            bar.set_description_str(label, refresh=False)
        postfix = {k: _short(v) for k, v in p.info.items() if keys is None or k in keys}
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.update(p.done - bar.n)
        if not state.get("timed") and bar.n > bar.initial:  # the first unit: rate and ETA known
            state["timed"] = True
            bar.refresh()

    try:
        return run(steps, show, cancel)
    finally:
        if "bar" in state:
            state["bar"].close()


def write(line: str) -> None:
    """Print a line on stdout without breaking a bar being drawn on stderr."""
    tqdm.write(line, file=sys.stdout)


def _short(value: float | str) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
