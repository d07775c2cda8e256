"""``medvae bench efficiency``: a CAD classifier on images vs latents at each downsizing factor.

For each factor f per side (area f^2 in 2D, volume f^3 in 3D) the classifier input is
(C, size/f, ...): latency of one training (or inference) step at a fixed batch, throughput in
samples per second, the largest power-of-two batch whose step fits a memory budget, and the storage
per sample. On CPU every batch-size trial runs in a fresh subprocess that reports its peak resident
memory above the memory it had after importing torch (model, optimiser state and activations); a
trial that raises, is killed (out of memory) or exceeds the budget does not fit, and the search
stops at the first power of two that does not fit. On GPU the trials run in-process against
``torch.cuda.max_memory_allocated`` and out-of-memory errors are caught.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np
import torch

from ..cad.models import build_classifier
from ..runtime.progress import Progress

STORAGE_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "int16": 2, "uint8": 1}
MODES = ("train", "infer")


@dataclasses.dataclass(frozen=True)
class EfficiencySettings:
    """What to measure: architecture, image size per dimensionality, factors and budget."""

    arch: str = "resnet18"
    dims: tuple[int, ...] = (2,)
    size2d: int = 256
    size3d: int = 64
    factors: tuple[int, ...] = (1, 4, 8)
    latent_channels: int = 1
    batch: int = 8
    repeats: int = 3
    budget_mb: float = 2048.0
    max_batch: int = 1024
    mode: str = "train"
    stem: str = "auto"
    storage_dtype: str = "float32"
    device: str = "cpu"
    trial_timeout: float = 900.0


def input_shape(spatial_dims: int, size: int, factor: int, latent_channels: int) -> tuple[int, ...]:
    """(C, *spatial) a classifier sees: the image for f=1, the latent for f>1."""
    channels = 1 if factor == 1 else latent_channels
    return (channels,) + (size // factor,) * spatial_dims


def make_step(
    arch: str, shape: tuple[int, ...], batch: int, mode: str, stem: str, device: str
) -> Callable[[], None]:
    """One AdamW training step (or a no-grad forward pass) on a random batch of ``shape``."""
    torch.manual_seed(0)
    dev = torch.device(device)
    net = build_classifier(arch, len(shape) - 1, shape[0], 2, shape[1:], stem).to(dev)
    x = torch.randn(batch, *shape, device=dev)
    y = torch.randint(0, 2, (batch,), device=dev)
    if mode == "infer":
        net.eval()

        def infer() -> None:
            with torch.no_grad():
                net(x)

        return infer
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def train() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train


def measure_latency(step: Callable[[], None], repeats: int, device: str) -> float:
    """Median seconds per call after one untimed warm-up call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def largest_fitting_batch(
    fits: Callable[[int], bool], max_batch: int, start: int = 1
) -> tuple[int, list[dict]]:
    """Largest power of two <= ``max_batch`` for which ``fits`` holds, trying start, 2 start, ...

    Stops at the first size that does not fit; an exception other than KeyboardInterrupt (out of
    memory, a failed subprocess) counts as not fitting. Returns the size (0 if even ``start``
    fails) and the trials made.
    """
    best, trials, batch = 0, [], start
    while batch <= max_batch:
        try:
            ok = bool(fits(batch))
            trials.append({"batch": batch, "fits": ok})
        except (RuntimeError, MemoryError, OSError, subprocess.SubprocessError) as e:
            ok = False
            trials.append({"batch": batch, "fits": False, "error": str(e).splitlines()[0][:200]})
        if not ok:
            break
        best, batch = batch, batch * 2
    return best, trials


def step_peak_mb(
    arch: str, shape: tuple[int, ...], batch: int, mode: str, stem: str, device: str,
    timeout: float = 900.0,
) -> float:
    """Memory one step needs, in MB (CPU: subprocess peak RSS; CUDA: peak allocated)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            make_step(arch, shape, batch, mode, stem, device)()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) / 2**20
        finally:
            torch.cuda.empty_cache()
    job = json.dumps({"arch": arch, "shape": list(shape), "batch": batch, "mode": mode, "stem": stem})
    done = subprocess.run(
        [sys.executable, "-m", "medvae_engine.benchmarks.efficiency", job],
        capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise RuntimeError(f"batch {batch} trial failed: {last}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


def _child(job: dict) -> None:
    """Subprocess body: one step, then print how far resident memory rose above its level before.

    On Linux the high-water mark is reset first (``/proc/self/clear_refs``), so a peak reached
    while importing libraries does not hide the step's own; elsewhere ru_maxrss is the fallback.
    """
    torch.set_num_threads(1)
    step = make_step(job["arch"], tuple(job["shape"]), job["batch"], job["mode"], job["stem"], "cpu")
    base = _rss_mb("VmRSS")
    _reset_peak()
    step()
    print(json.dumps({"peak_mb": max(0.0, _rss_mb("VmHWM") - base)}))


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_mb(field: str) -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory in MB; ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    scale = 1.0 if platform.system() == "Darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_efficiency(settings: EfficiencySettings) -> Generator[Progress, None, dict]:
    """Measure every (dims, factor) case; yields Progress (two steps a case: latency, batch
    search), returns the results."""
    cases = []
    total, done = 2 * len(settings.dims) * len(settings.factors), 0
    for dims in settings.dims:
        size = settings.size2d if dims == 2 else settings.size3d
        base_throughput = None
        for factor in settings.factors:
            shape = input_shape(dims, size, factor, settings.latent_channels)
            step = make_step(settings.arch, shape, settings.batch, settings.mode, settings.stem,
                             settings.device)
            latency = measure_latency(step, settings.repeats, settings.device)
            del step
            done += 1
            yield Progress(done, total, "latency", info={"dims": dims, "factor": factor})
            peaks = {}

            def fits(batch: int, shape=shape, peaks=peaks) -> bool:
                peaks[batch] = step_peak_mb(settings.arch, shape, batch, settings.mode,
                                            settings.stem, settings.device, settings.trial_timeout)
                return peaks[batch] <= settings.budget_mb

            start = 2 if settings.mode == "train" else 1  # BatchNorm trains on 2 samples or more
            max_batch, trials = largest_fitting_batch(fits, settings.max_batch, start)
            for t in trials:
                t["peak_mb"] = peaks.get(t["batch"])
            throughput = settings.batch / latency
            base_throughput = base_throughput or throughput
            elements = int(np.prod(shape))
            cases.append({
                "dims": dims, "factor": factor, "compression": factor**dims,
                "input_shape": list(shape), "latency_s": latency, "throughput": throughput,
                "speedup": throughput / base_throughput, "max_batch": max_batch,
                "max_batch_capped": max_batch == _floor_pow2(settings.max_batch),
                "trials": trials, "storage_bytes": elements * STORAGE_DTYPES[settings.storage_dtype],
            })
            done += 1
            yield Progress(done, total, "batch search", info={"dims": dims, "factor": factor})
    return {
        "benchmark": "cad efficiency",
        "settings": dataclasses.asdict(settings),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if settings.device.startswith("cuda")
                    else None},
        "cases": cases,
    }


def _floor_pow2(n: int) -> int:
    return 1 << (int(n).bit_length() - 1)


def efficiency_markdown(results: dict) -> str:
    """Table of the measured cases."""
    s = results["settings"]
    lines = [
        f"| dims | f | compression | input (C, spatial) | latency/batch of {s['batch']} (s) | "
        "throughput (samples/s) | speed-up | max batch | storage/sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        cap = "+" if c["max_batch_capped"] else ""
        lines.append(
            f"| {c['dims']}D | {c['factor']} | {c['compression']}x | {tuple(c['input_shape'])} | "
            f"{c['latency_s']:.4f} | {c['throughput']:.1f} | {c['speedup']:.1f}x | "
            f"{c['max_batch']}{cap} | {_bytes(c['storage_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def efficiency_figure(results: dict, path) -> None:
    """Bars per factor (like MedVAE Figure 2): throughput, max batch, latency, storage; log axes."""
    from matplotlib.figure import Figure  # lazy: matplotlib takes about half a second to import

    dims = sorted({c["dims"] for c in results["cases"]})
    panels = [("throughput", "samples / s"), ("max_batch", "largest batch in budget"),
              ("latency_s", "seconds / batch"), ("storage_bytes", "bytes / sample")]
    fig = Figure(figsize=(3.2 * len(panels), 2.8 * len(dims)))
    axes = fig.subplots(len(dims), len(panels), squeeze=False)
    for row, d in zip(axes, dims):
        cases = [c for c in results["cases"] if c["dims"] == d]
        labels = ["image" if c["factor"] == 1 else f"f={c['factor']}\n({c['compression']}x)"
                  for c in cases]
        for ax, (key, title) in zip(row, panels):
            values = [max(c[key], 1e-9) for c in cases]
            ax.bar(labels, values, color=["0.55"] + ["tab:blue"] * (len(cases) - 1))
            ax.set_yscale("log")
            ax.set_title(f"{d}D {results['settings']['arch']}: {title}", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
