"""Reader-study statistics against textbook examples, independent implementations and hand-computed
numbers, and the full analysis of simulated reading sessions."""

from __future__ import annotations

import csv
import itertools
import json
import math

import matplotlib.image
import numpy as np
import pytest
from scipy import stats
from study_helpers import write_key, write_study

from medvae_engine.analysis.stats import icc_2_1, krippendorff_alpha, mean_ci, paired_comparison
from medvae_engine.study.analyze import (
    analyze_study,
)
from medvae_engine.study.session import ReaderSession
from medvae_engine.study.spec import load_study

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(2,1) = .29
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                          [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers x 12 units
N = np.nan
KRIPPENDORFF = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
                         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
                         [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
                         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]])


def test_icc_2_1_matches_shrout_and_fleiss():
    assert round(icc_2_1(SHROUT_FLEISS), 2) == 0.29


def test_icc_2_1_is_absolute_agreement():
    targets = np.arange(10, dtype=float)[:, None]
    assert icc_2_1(np.hstack([targets, targets, targets])) == pytest.approx(1.0)
    shifted = icc_2_1(np.hstack([targets, targets + 3]))  # a rater bias lowers absolute agreement
    assert 0 < shifted < 0.9
    assert math.isnan(icc_2_1(np.ones((1, 3))))


@pytest.mark.parametrize(("level", "expected"),
                         [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_matches_the_published_example(level, expected):
    assert round(krippendorff_alpha(KRIPPENDORFF, level), 3) == expected


def alpha_by_pairs(data: np.ndarray, level: str) -> float:
    """Krippendorff's alpha written from its pairwise definition, value by value."""
    units = [[v for v in column if not np.isnan(v)] for column in data.T]
    units = [u for u in units if len(u) >= 2]
    pooled = [v for u in units for v in u]
    frequency = {v: pooled.count(v) for v in set(pooled)}

    def delta(a, b):
        if level == "nominal":
            return float(a != b)
        if level == "interval":
            return (a - b) ** 2
        lo, hi = min(a, b), max(a, b)
        between = sum(f for v, f in frequency.items() if lo <= v <= hi)
        return (between - (frequency[a] + frequency[b]) / 2) ** 2

    n = len(pooled)
    observed = sum(delta(u[i], u[j]) / (len(u) - 1)
                   for u in units for i, j in itertools.permutations(range(len(u)), 2)) / n
    expected = sum(delta(a, b) for a, b in itertools.permutations(pooled, 2)) / (n * (n - 1))
    return 1 - observed / expected


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_alpha_agrees_with_a_pairwise_implementation(level):
    rng = np.random.default_rng(3)
    truth = rng.integers(-2, 3, size=15)
    data = np.clip(truth + rng.integers(-1, 2, size=(3, 15)), -2, 2).astype(float)
    data[rng.random(data.shape) < 0.15] = np.nan
    assert krippendorff_alpha(data, level) == pytest.approx(alpha_by_pairs(data, level))


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha(np.array([[1, 2, 3], [1, 2, 3.0]])) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha(np.ones((2, 4))))  # no variation: undefined


def test_mean_ci_by_hand():
    result = mean_ci([1, 2, 3, 4])
    half = 3.182446 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(n)
    assert result["mean"] == 2.5 and result["sd"] == pytest.approx(math.sqrt(5 / 3))
    assert result["ci_low"] == pytest.approx(2.5 - half, abs=1e-5)
    assert result["ci_high"] == pytest.approx(2.5 + half, abs=1e-5)
    assert math.isnan(mean_ci([1.0])["ci_low"])


def test_paired_difference_by_hand():
    result = paired_comparison([1, 2, 3, -1, 4, 5], [0] * 6, ci="t")
    # |d| ranks: 1,1 -> 1.5 each; 2..5 -> 3..6; negative ranks sum to 1.5
    assert result["wilcoxon_statistic"] == 1.5
    assert result["mean_difference"] == pytest.approx(14 / 6)
    assert result["wilcoxon_p"] < 0.1
    assert paired_comparison([1, 1], [1, 1], ci="t")["wilcoxon_p"] == 1.0


# A simulated study: 2 methods x 4 cases = 8 items, 3 readers. Fidelity scores by hand:
CASES = ["c1", "c2", "c3", "c4"]
FIDELITY = {  # reader -> method -> score per case
    "r1": {"good": [0, 0, 0, 0], "bad": [-1, -2, -1, -1]},
    "r2": {"good": [0, -1, 0, -1], "bad": [-2, -2, -1, -2]},
    "r3": {"good": [1, 0, 0, -1], "bad": [-1, -1, 0, -2]},
}
SECONDS = {"r1": 10.0, "r2": 20.0, "r3": 4.0}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def finished_study(tmp_path):
    root = write_study(tmp_path / "study", 8, seed=2)
    assignment = {f"item_{i:03d}": pair for i, pair in
                  enumerate(itertools.product(CASES, ["good", "bad"]), start=1)}
    write_key(root, assignment, ["good", "bad"])
    study = load_study(root)
    for reader, scores in FIDELITY.items():
        clock = Clock()
        session = ReaderSession(study, reader, clock=clock)
        while not session.complete:
            case, method = assignment[session.current.id]
            value = scores[method][CASES.index(case)]
            session.answer("fidelity", value)
            session.answer("clinical_features", value)
            session.answer("artifacts", 0)
            clock.now += SECONDS[reader]
            session.confirm()
        session.submit()
    straggler = ReaderSession(study, "r4")
    straggler.answer("fidelity", 2)  # never confirmed: not counted
    return root


def test_analysis_matches_hand_computed_numbers(finished_study, tmp_path):
    out = tmp_path / "analysis"
    results = analyze_study(finished_study, out)
    row = next(r for r in results["summary"]
               if r["method"] == "good" and r["question"] == "fidelity")
    # reader means 0, -0.5, 0 -> mean -1/6, SD sqrt(1/12), CI with t(0.975, 2) = 4.302653
    assert row["n_readers"] == 3 and row["n_ratings"] == 12
    assert row["mean"] == pytest.approx(-1 / 6)
    assert row["sd"] == pytest.approx(math.sqrt(1 / 12))
    half_width = 4.302653 * math.sqrt(1 / 12) / math.sqrt(3)
    assert row["ci_high"] - row["mean"] == pytest.approx(half_width)
    bad = next(r for r in results["summary"]
               if r["method"] == "bad" and r["question"] == "fidelity")
    assert bad["mean"] == pytest.approx(np.mean([-1.25, -1.75, -1.0]))

    paired = next(r for r in results["paired"] if r["question"] == "fidelity")
    good = np.array([FIDELITY[r]["good"] for r in FIDELITY], float)
    worse = np.array([FIDELITY[r]["bad"] for r in FIDELITY], float)
    per_case = (good - worse).mean(axis=0)  # [1.67, 1.33, 1.0, 1.0]
    assert (paired["method_a"], paired["method_b"]) == ("good", "bad")
    assert paired["mean_difference"] == pytest.approx(per_case.mean())
    assert paired["wilcoxon_p"] == pytest.approx(stats.wilcoxon(per_case).pvalue)
    t_interval = stats.ttest_1samp(per_case, 0).confidence_interval(0.95)
    assert paired["mean_difference_ci_low"] == pytest.approx(t_interval.low)
    assert paired["mean_difference_ci_high"] == pytest.approx(t_interval.high)
    assert paired["sd_difference"] == pytest.approx(per_case.std(ddof=1))
    with open(out / "paired.csv", newline="") as fh:
        header = next(csv.reader(fh))
    # the key names of `medvae analyze`'s comparisons (one paired-statistics function)
    assert header == ["question", "method_a", "method_b", "n", "mean_difference", "sd_difference",
                      "mean_difference_ci_low", "mean_difference_ci_high", "wilcoxon_statistic",
                      "wilcoxon_p"]
    assert set(header[3:]) <= set(paired_comparison([1.0, 2.0, 4.0], [0.5, 2.5, 1.0]))

    agreement = next(r for r in results["agreement"] if r["question"] == "fidelity")
    matrix = np.hstack([good, worse])  # readers x items, same items in the same columns
    assert agreement["icc_2_1"] == pytest.approx(icc_2_1(matrix.T))
    assert agreement["krippendorff_alpha_ordinal"] == pytest.approx(alpha_by_pairs(matrix,
                                                                                   "ordinal"))
    artifacts = next(r for r in results["agreement"] if r["question"] == "artifacts")
    assert math.isnan(artifacts["krippendorff_alpha_ordinal"])  # everyone said 0

    readers = {r["reader"]: r for r in results["readers"]}
    assert readers["r1"]["completion"] == 1.0 and readers["r1"]["submitted"]
    assert readers["r4"]["confirmed"] == 0 and not readers["r4"]["submitted"]
    assert readers["r2"]["median_seconds_per_item"] == pytest.approx(20.0)
    assert results["completion_and_time"]["median_seconds_per_item"] == pytest.approx(10.0)

    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"][0]["mean"] == pytest.approx(results["summary"][0]["mean"])
    assert saved["agreement"][2]["krippendorff_alpha_ordinal"] is None
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 6  # 2 methods x 3 questions
    with open(out / "ratings.csv") as f:
        assert len(list(csv.DictReader(f))) == 3 * 8 * 3
    image = matplotlib.image.imread(out / "scores.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0


def test_a_key_from_another_study_is_refused(finished_study, tmp_path):
    from medvae_engine.errors import InputError

    other = write_key(tmp_path / "other", {"item_001": ("c1", "good")}, ["good"])
    with pytest.raises(InputError, match="does not belong to the study"):
        analyze_study(finished_study, tmp_path / "out", key_path=other)
    assert not (tmp_path / "out").exists()
