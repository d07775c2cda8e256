"""Train and evaluate one classifier per (input, seed) with identical settings across inputs.

Every input gets the same architecture family and size, AdamW, learning rate, weight decay, epochs,
batch size, seeds and per-channel standardisation (statistics of its own training set). Under
``torchrun`` each process takes its share of every batch and DDP averages the gradients, so N
processes reach the same result as one; every process then scores the whole test set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..runtime.distributed import Distributed
from ..runtime.progress import Progress, rebased
from .auroc import auroc
from .models import build_classifier


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What is held identical for every input."""

    arch: str = "resnet18"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    epochs: int = 3
    batch_size: int = 32
    seeds: tuple[int, ...] = (0, 1)
    stem: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or not self.seeds:
            raise ValueError("epochs >= 1, batch_size >= 2, lr > 0 and at least one seed are needed")


@dataclasses.dataclass
class Split:
    """Classifier inputs (N, C, *spatial) and integer labels for training and testing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def standardize(split: Split) -> Split:
    """Per-channel zero mean and unit SD using training-set statistics only."""
    axes = (0,) + tuple(range(2, split.x_train.ndim))
    mean = split.x_train.mean(axis=axes, keepdims=True)
    sd = split.x_train.std(axis=axes, keepdims=True) + 1e-6
    return dataclasses.replace(
        split,
        x_train=((split.x_train - mean) / sd).astype(np.float32),
        x_test=((split.x_test - mean) / sd).astype(np.float32),
    )


def fit_and_score(
    split: Split, num_classes: int, settings: TrainSettings, seed: int, env: Distributed
) -> Generator[Progress, None, float]:
    """Train one classifier from ``seed``; yields Progress per epoch (its loss in ``info``),
    returns the test AUROC."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spatial_dims = split.x_train.ndim - 2
    net = build_classifier(settings.arch, spatial_dims, split.x_train.shape[1], num_classes,
                           split.x_train.shape[2:], settings.stem).to(env.device)
    model = DistributedDataParallel(net) if env.world > 1 else net
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train.astype(np.int64))
    for epoch in range(settings.epochs):
        model.train()
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(order), settings.batch_size):
            local = order[start:start + settings.batch_size][env.rank::env.world]
            if len(local) < 2:  # BatchNorm needs two samples; the same on every rank
                continue
            loss = torch.nn.functional.cross_entropy(
                model(x[local].to(env.device)), y[local].to(env.device)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        yield Progress(epoch + 1, settings.epochs, "train",
                       info={"seed": seed, "loss": float(np.mean(losses)) if losses else float("nan")})
    return auroc(split.y_test, predict(net, split.x_test, settings.batch_size, env.device))


def predict(net: torch.nn.Module, x: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Per-class log-odds against the other classes (N, K) in eval mode, monotone in the softmax
    probabilities: confident networks saturate probabilities to exactly 0 or 1 (and even their
    logarithms to 0), and tied scores pull AUROC towards 0.5."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = net(torch.from_numpy(x[start:start + batch_size]).to(device)).double()
            k = logits.shape[1]
            others = logits.unsqueeze(1).expand(-1, k, k).masked_fill(
                torch.eye(k, dtype=torch.bool, device=logits.device), float("-inf"))
            out.append((logits - torch.logsumexp(others, dim=2)).cpu().numpy())
    return np.concatenate(out)


def evaluate_inputs(
    splits: dict[str, Split], num_classes: int, settings: TrainSettings
) -> Generator[Progress, None, dict[str, dict]]:
    """Train every input over every seed, yielding Progress in epochs of the whole run; returns
    AUROC per seed, mean and SD for each input."""
    env = Distributed(settings.device)
    results = {}
    total, done = training_epochs(len(splits), settings), 0
    try:
        for name, split in splits.items():
            split = standardize(split)
            scores = []
            for seed in settings.seeds:
                value = yield from rebased(fit_and_score(split, num_classes, settings, seed, env),
                                           done, total, input=name)
                done += settings.epochs
                scores.append(value)
            results[name] = summarize(scores, settings.seeds, split.x_train.shape[1:])
    finally:
        env.close()
    return results


def training_epochs(inputs: int, settings: TrainSettings) -> int:
    """Epochs `evaluate_inputs` trains for ``inputs`` inputs: its Progress total."""
    return inputs * len(settings.seeds) * settings.epochs


def summarize(scores: list[float], seeds: tuple[int, ...], input_shape: tuple[int, ...]) -> dict:
    """AUROC per seed with its mean and sample SD (0 for a single seed)."""
    values = np.asarray(scores, np.float64)
    return {
        "auroc": [float(v) for v in values],
        "seeds": list(seeds),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "input_shape": [int(s) for s in input_shape],
    }
