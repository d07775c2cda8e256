"""A training run's folder and its metrics log (metrics.csv, plus TensorBoard when installed)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import MedVAEError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"


def run_folder(output_dir: str, resume: bool) -> tuple[Path, Path]:
    """The run folder and its checkpoint path; refuses to start over a run or resume from nothing."""
    out = Path(output_dir)
    ckpt_path = out / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise MedVAEError(f"{ckpt_path}: a run already exists here; pass --resume to continue it "
                          "or choose another run.output_dir")
    if resume and not ckpt_path.exists():
        raise MedVAEError(f"{ckpt_path}: no checkpoint to resume from")
    return out, ckpt_path


class MetricsLog:
    """metrics.csv (one row per logged step; on resume rows after the checkpoint are dropped), plus
    TensorBoard events when tensorboard is installed."""

    def __init__(self, path: Path, start: int, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self.last_losses: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start > 0 and path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        for row in kept:
            values = {k: float(v) for k, v in row.items() if k not in ("step", "time_s") and v}
            self.last_losses.update({k: v for k, v in values.items() if not k.startswith("val_")})
            self.last_val.update({k: v for k, v in values.items() if k.startswith("val_")})
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(kept)
        self.tensorboard = None
        try:  # optional dependency, and slow to import
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:
            pass

    def write(self, step: int, seconds: float, values: dict[str, float]) -> None:
        """Append one row (and TensorBoard scalars) for ``step``."""
        self.last_losses.update({k: v for k, v in values.items() if not k.startswith("val_")})
        self.last_val.update({k: v for k, v in values.items() if k.startswith("val_")})
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            formatted = {k: f"{v:.6g}" for k, v in values.items()}
            csv.DictWriter(f, self.columns).writerow(
                {"step": step, "time_s": f"{seconds:.1f}", **formatted})
        if self.tensorboard is not None:
            for k, v in values.items():
                self.tensorboard.add_scalar(k, v, step)
            self.tensorboard.flush()
