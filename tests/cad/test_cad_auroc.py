"""AUROC from ranks against references: scipy's Mann-Whitney U and a direct pair count."""

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from medvae_engine.cad.auroc import auroc, binary_auroc, macro_auroc


def _pair_count(labels, scores) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@pytest.mark.parametrize("seed", range(4))
def test_binary_auroc_matches_mann_whitney_and_pair_count(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + 0.8 * labels, 1)  # rounding makes ties
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    expected = u / ((labels == 1).sum() * (labels == 0).sum())
    assert binary_auroc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert binary_auroc(labels, scores) == pytest.approx(_pair_count(labels, scores), abs=1e-12)


def test_binary_auroc_extremes_and_errors():
    assert binary_auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert binary_auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert binary_auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    with pytest.raises(ValueError):
        binary_auroc([1, 1], [0.2, 0.3])


def test_macro_auroc_is_the_mean_of_one_vs_rest():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 90)
    probs = rng.dirichlet(np.ones(3), 90) + np.eye(3)[labels] * 0.3
    per_class = [_pair_count((labels == k).astype(int), probs[:, k]) for k in range(3)]
    assert macro_auroc(labels, probs) == pytest.approx(np.mean(per_class), abs=1e-12)
    assert auroc(labels, probs) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_auroc_uses_class_one_column_for_two_classes():
    labels = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.7, 0.4, 0.3, 0.9])
    assert auroc(labels, np.stack([1 - p1, p1], axis=1)) == binary_auroc(labels, p1)
