"""AUROC from ranks (the Mann-Whitney U statistic): binary and macro one-vs-rest multi-class."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def binary_auroc(labels, scores) -> float:
    """P(score of a positive > score of a negative), ties counting one half; labels are 0/1."""
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative sample")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_auroc(labels, probabilities) -> float:
    """Mean over classes of the one-vs-rest AUROC of that class's probability column."""
    y = np.asarray(labels).ravel()
    p = np.asarray(probabilities, dtype=np.float64)
    present = [k for k in range(p.shape[1]) if 0 < (y == k).sum() < y.size]
    if not present:
        raise ValueError("macro AUROC needs at least two classes present in the labels")
    return float(np.mean([binary_auroc(y == k, p[:, k]) for k in present]))


def auroc(labels, probabilities) -> float:
    """Binary AUROC on the class-1 column for two classes, macro one-vs-rest otherwise; any
    monotone transform of the probabilities (e.g. per-class log-odds) gives the same value."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        return binary_auroc(labels, p[:, 1])
    return macro_auroc(labels, p)
