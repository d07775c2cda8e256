"""Paired statistics against scipy.stats and plain numpy."""

import numpy as np
import pytest
from scipy import stats as sps

from medvae_engine.analysis import stats
from medvae_engine.errors import InputError


def samples(n=30, seed=3):
    rng = np.random.default_rng(seed)
    a = 30 + rng.standard_normal(n)
    b = a - 0.4 + 0.6 * rng.standard_normal(n)
    return a, b


def test_effect_sizes_reproduce_scipy_t_statistics():
    a, b = samples()
    n = a.size
    assert stats.cohen_dz(a, b) * np.sqrt(n) == pytest.approx(sps.ttest_rel(a, b).statistic)
    assert stats.cohen_d(a, b) / np.sqrt(2 / n) == pytest.approx(sps.ttest_ind(a, b).statistic)
    c = b[:20]
    t = sps.ttest_ind(a, c).statistic
    assert stats.cohen_d(a, c) / np.sqrt(1 / n + 1 / 20) == pytest.approx(t)


def test_signed_ranks_and_rank_biserial_match_scipy_wilcoxon():
    a, b = samples()
    a[0] = b[0]  # a zero difference is dropped
    a[1], b[1], a[2], b[2] = 1.0, 0.5, 2.0, 1.5  # tied |differences|
    w_plus, w_minus = stats.signed_rank_sums(a, b)
    n_nonzero = np.count_nonzero(a - b)
    assert w_plus + w_minus == n_nonzero * (n_nonzero + 1) / 2
    assert w_plus == pytest.approx(sps.wilcoxon(a, b, alternative="greater").statistic)
    assert min(w_plus, w_minus) == pytest.approx(sps.wilcoxon(a, b).statistic)
    r = stats.rank_biserial(a, b)
    assert r == pytest.approx((2 * w_plus - n_nonzero * (n_nonzero + 1) / 2)
                              / (n_nonzero * (n_nonzero + 1) / 2))
    assert r > 0  # a is better on most images


def test_bootstrap_is_seeded_percentile_and_agrees_with_scipy():
    a, b = samples()
    d = a - b
    lo, hi = stats.bootstrap_ci(d, n_resamples=2000, seed=7)
    rng = np.random.default_rng(7)
    means = [d[rng.integers(0, d.size, d.size)].mean() for _ in range(2000)]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert stats.bootstrap_ci(d, n_resamples=2000, seed=7) == (lo, hi)
    ref = sps.bootstrap((d,), np.mean, n_resamples=10_000, method="percentile",
                        random_state=np.random.default_rng(1)).confidence_interval
    lo10, hi10 = stats.bootstrap_ci(d)
    tol = 0.1 * d.std() / np.sqrt(d.size)
    assert lo10 == pytest.approx(ref.low, abs=tol) and hi10 == pytest.approx(ref.high, abs=tol)


def test_bland_altman_and_full_comparison():
    a, b = samples()
    ba = stats.bland_altman(a, b)
    d = a - b
    assert ba["bias"] == pytest.approx(d.mean())
    assert ba["loa_high"] - ba["loa_low"] == pytest.approx(2 * 1.96 * d.std(ddof=1))
    out = stats.paired_comparison(a, b, n_resamples=1000)
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert out["wilcoxon_p"] < 0.05
    assert out["mean_difference_ci_low"] < out["mean_difference"] < out["mean_difference_ci_high"]
    assert out["cohen_dz"] == pytest.approx(stats.cohen_dz(a, b))
    with pytest.raises(InputError, match="finite"):
        stats.paired_comparison([1.0, np.inf], [1.0, 2.0])


def test_t_intervals_match_scipy_and_few_pairs_give_nan_not_errors():
    a, b = samples()
    out = stats.paired_comparison(a, b, ci="t")
    interval = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert out["ci_method"] == "t"
    assert (out["mean_difference_ci_low"], out["mean_difference_ci_high"]) == pytest.approx(
        (interval.low, interval.high))
    assert out["sd_difference"] == pytest.approx((a - b).std(ddof=1))
    boot = stats.paired_comparison(a, b, n_resamples=1000)
    assert boot["ci_method"] == "bootstrap" and set(boot) == set(out)  # one set of key names
    one = stats.paired_comparison([1.0], [0.5], ci="t")
    assert one["n"] == 1 and one["mean_difference"] == 0.5
    assert all(np.isnan(one[k]) for k in ("sd_difference", "mean_difference_ci_low", "cohen_dz"))
    assert np.isnan(stats.paired_comparison([], [])["wilcoxon_p"])
    with pytest.raises(ValueError, match="ci must be"):
        stats.paired_comparison(a, b, ci="normal")
