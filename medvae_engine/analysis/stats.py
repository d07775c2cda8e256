"""Statistics in one place: paired comparisons of two methods over the same images or cases
(per-image PSNR in `medvae analyze`, per-case reader scores in `medvae study analyze`), means with
Student-t intervals, and inter-reader agreement (ICC(2,1), Krippendorff's alpha).

Effect sizes follow the usual definitions: Cohen's d with the pooled standard deviation,
d_z = mean(diff) / sd(diff) for paired data, matched-pairs rank-biserial correlation
r = (W+ - W-) / (W+ + W-) from the signed ranks of non-zero differences, Bland-Altman bias
mean(a - b) with limits bias +/- 1.96 sd(a - b). Confidence intervals are percentile bootstraps
(10,000 resamples by default) from a seeded numpy Generator, so reruns give the same interval, or
Student-t intervals (``ci="t"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

from ..errors import InputError


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired samples differ in length: {a.size} vs {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("paired statistics need finite values (inf PSNR: identical images)")
    return a, b


def cohen_d(a, b) -> float:
    """(mean a - mean b) / pooled sd (ddof 1); NaN when the pooled sd is 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = a.size, b.size
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    return float((a.mean() - b.mean()) / np.sqrt(pooled)) if pooled > 0 else math.nan


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


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample SD and Student-t confidence interval of the mean (NaN where undefined)."""
    x = np.asarray(values, dtype=float)
    n = x.size
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1:
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    else:
        half = math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


CI_METHODS = ("bootstrap", "t")


def paired_comparison(
    a, b, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95, ci: str = "bootstrap"
) -> dict[str, float]:
    """Everything to report when method a is compared with method b on the same images or cases.

    Wilcoxon signed-rank (two-sided, scipy's exact/normal choice, zero differences dropped),
    effect sizes, Bland-Altman, and confidence intervals of each mean and of the mean difference:
    ``ci="bootstrap"`` (percentile, seeded) or ``"t"`` (Student t). Flat keys, so the same names
    serve JSON and CSV; statistics that need two pairs are NaN with fewer.
    """
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {', '.join(CI_METHODS)}, got {ci!r}")
    a, b = _paired(a, b)
    d = a - b
    n = int(a.size)
    out: dict = {"n": n, "ci_method": ci}
    for name, values in (("mean_a", a), ("mean_b", b), ("mean_difference", d)):
        t = mean_ci(values, confidence)
        if ci == "bootstrap" and n > 1:
            low, high = bootstrap_ci(values, n_resamples=n_resamples, confidence=confidence,
                                     seed=seed)
        else:
            low, high = t["ci_low"], t["ci_high"]
        out |= {name: t["mean"], f"{name}_ci_low": low, f"{name}_ci_high": high}
    out["sd_difference"] = float(d.std(ddof=1)) if n > 1 else math.nan
    if n == 0:
        w_stat, p_value = math.nan, math.nan
    elif np.all(d == 0):
        w_stat, p_value = 0.0, 1.0
    else:
        test = sps.wilcoxon(a, b)
        w_stat, p_value = float(test.statistic), float(test.pvalue)
    out |= {"wilcoxon_statistic": w_stat, "wilcoxon_p": p_value}
    if n < 2:
        return out | {k: math.nan for k in ("rank_biserial", "cohen_d", "cohen_dz")} | {
            f"bland_altman_{k}": math.nan for k in ("bias", "sd", "loa_low", "loa_high")}
    return out | {
        "rank_biserial": rank_biserial(a, b),
        "cohen_d": cohen_d(a, b),
        "cohen_dz": float(d.mean() / d.std(ddof=1)) if d.std() > 0 else 0.0,
        **{f"bland_altman_{k}": v for k, v in bland_altman(a, b).items()},
    }


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) of a targets x raters matrix without missing values (Shrout & Fleiss 1979)."""
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape
    if n < 2 or k < 2 or np.isnan(x).any():
        return math.nan
    grand = x.mean()
    ss_targets = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_raters = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((x - grand) ** 2).sum() - ss_targets - ss_raters
    bms = ss_targets / (n - 1)
    jms = ss_raters / (k - 1)
    ems = ss_error / ((n - 1) * (k - 1))
    denominator = bms + (k - 1) * ems + k * (jms - ems) / n
    return float((bms - ems) / denominator) if denominator > 0 else math.nan


def krippendorff_alpha(data: np.ndarray, level: str = "ordinal") -> float:
    """Krippendorff's alpha of a raters x units matrix (NaN = missing) for nominal, ordinal or
    interval data, computed from the coincidence matrix."""
    x = np.asarray(data, dtype=float)
    values = np.unique(x[~np.isnan(x)])
    if values.size < 1:
        return math.nan
    coincidence = np.zeros((values.size, values.size))
    for unit in x.T:
        present = unit[~np.isnan(unit)]
        if present.size < 2:
            continue
        counts = np.bincount(np.searchsorted(values, present), minlength=values.size)
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (present.size - 1)
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    if n < 2:
        return math.nan
    if level == "nominal":
        delta = (values[:, None] != values[None, :]).astype(float)
    elif level == "interval":
        delta = (values[:, None] - values[None, :]) ** 2
    elif level == "ordinal":
        cumulative = np.cumsum(n_c)
        low = np.minimum.outer(np.arange(values.size), np.arange(values.size))
        high = np.maximum.outer(np.arange(values.size), np.arange(values.size))
        between = cumulative[high] - cumulative[low] + n_c[low]
        delta = (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    else:
        raise ValueError(f"level must be nominal, ordinal or interval, got {level!r}")
    observed = (coincidence * delta).sum() / n
    expected = (np.outer(n_c, n_c) * delta).sum() / (n * (n - 1))
    return float(1 - observed / expected) if expected > 0 else math.nan
