"""Paired statistics comparing two methods over the same images (e.g. per-image PSNR).

Effect sizes follow the usual definitions: Cohen's d with the pooled standard deviation,
d_z = mean(diff) / sd(diff) for paired data, matched-pairs rank-biserial correlation
r = (W+ - W-) / (W+ + W-) from the signed ranks of non-zero differences, Bland-Altman bias
mean(a - b) with limits bias +/- 1.96 sd(a - b). Confidence intervals are percentile bootstraps
(10,000 resamples by default) from a seeded numpy Generator, so reruns give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as sps

from ..errors import InputError


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired samples differ in length: {a.size} vs {b.size}")
    if a.size < 2:
        raise InputError("paired statistics need at least two images")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("paired statistics need finite values (inf PSNR: identical images)")
    return a, b


def cohen_d(a, b) -> float:
    """(mean a - mean b) / pooled sd (ddof 1)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = a.size, b.size
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    return float((a.mean() - b.mean()) / np.sqrt(pooled))


def cohen_dz(a, b) -> float:
    """Paired effect size: mean(a - b) / sd(a - b) (ddof 1)."""
    a, b = _paired(a, b)
    d = a - b
    return float(d.mean() / d.std(ddof=1))


def signed_rank_sums(a, b) -> tuple[float, float]:
    """(W+, W-): sums of the ranks of |a - b| over positive and negative differences (zeros dropped,
    ties get average ranks)."""
    a, b = _paired(a, b)
    d = a - b
    d = d[d != 0]
    ranks = sps.rankdata(np.abs(d))
    return float(ranks[d > 0].sum()), float(ranks[d < 0].sum())


def rank_biserial(a, b) -> float:
    """Matched-pairs rank-biserial correlation (W+ - W-) / (W+ + W-), in [-1, 1]."""
    w_plus, w_minus = signed_rank_sums(a, b)
    total = w_plus + w_minus
    return 0.0 if total == 0 else (w_plus - w_minus) / total


def bootstrap_ci(
    values,
    statistic: Callable[[np.ndarray], np.ndarray] = lambda x: x.mean(axis=-1),
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` (vectorised over the last axis) of ``values``."""
    v = np.asarray(values, np.float64).ravel()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))
    boot = statistic(v[idx])
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def bland_altman(a, b) -> dict[str, float]:
    """Bias mean(a - b), sd of the differences and the 95% limits of agreement bias +/- 1.96 sd."""
    a, b = _paired(a, b)
    d = a - b
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def paired_comparison(
    a, b, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Everything to report when method a is compared with method b on the same images.

    Wilcoxon signed-rank (two-sided, scipy's exact/normal choice, zero differences dropped),
    effect sizes, bootstrap CI of the mean difference and of each mean, Bland-Altman.
    """
    a, b = _paired(a, b)
    d = a - b
    if np.all(d == 0):
        w_stat, p_value = 0.0, 1.0
    else:
        test = sps.wilcoxon(a, b)
        w_stat, p_value = float(test.statistic), float(test.pvalue)
    diff_lo, diff_hi = bootstrap_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed)
    a_lo, a_hi = bootstrap_ci(a, n_resamples=n_resamples, confidence=confidence, seed=seed)
    b_lo, b_hi = bootstrap_ci(b, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {
        "n": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_a_ci": [a_lo, a_hi],
        "mean_b_ci": [b_lo, b_hi],
        "mean_difference": float(d.mean()),
        "mean_difference_ci": [diff_lo, diff_hi],
        "wilcoxon_statistic": w_stat,
        "wilcoxon_p": p_value,
        "rank_biserial": rank_biserial(a, b),
        "cohen_d": cohen_d(a, b),
        "cohen_dz": float(d.mean() / d.std(ddof=1)) if d.std() > 0 else 0.0,
        **{f"bland_altman_{k}": v for k, v in bland_altman(a, b).items()},
    }
