"""Reader-study statistics: scores per method and question, paired method differences, inter-reader
agreement, completion and reading time; written as CSV, JSON and a figure like MedVAE's Figure 3.

Definitions (one place, so reports and tests agree):
- Every Likert answer compares the right/B pane with the left/A pane; its score is the candidate
  relative to the original: the answer as given where the original was A (always so side by side),
  negated where the original was B (blinded_ab, from the key's ``original_side``).
- Score of a method on a question: each reader's mean over the items they confirmed; the reported
  mean, SD and 95% CI (Student t, readers - 1 degrees of freedom) are across those reader means.
- Paired difference of two methods: per case, the mean over readers of (score A - score B) for
  readers who scored both; mean, SD and t CI across cases, and the Wilcoxon signed-rank test across
  cases (``analysis.stats.paired_comparison`` with ``ci="t"``: the key names of `medvae analyze`).
- Agreement: ICC(2,1) (Shrout & Fleiss: two-way random effects, absolute agreement, single rater)
  over items scored by every reader, and Krippendorff's alpha (ordinal metric) over all items.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medvae_engine.analysis.stats import icc_2_1, krippendorff_alpha, mean_ci, paired_comparison
from medvae_engine.errors import InputError
from medvae_engine.imaging.atomic import atomic_write, atomic_write_text
from medvae_engine.study.create import default_key_path, load_key
from medvae_engine.study.persistence import read_log
from medvae_engine.study.session import replay_log
from medvae_engine.study.spec import ANSWERS_DIR, Question, Study, load_study

# columns of paired.csv: the names of analysis.stats.paired_comparison (as in `medvae analyze`)
PAIRED_KEYS = ("n", "mean_difference", "sd_difference", "mean_difference_ci_low",
               "mean_difference_ci_high", "wilcoxon_statistic", "wilcoxon_p")


# -- collecting ratings ------------------------------------------------------------------------
def candidate_score(question: Question, answer: Any, original_side: str) -> Any:
    """A B-versus-A answer as the candidate relative to the original (negated if the original
    was B); answers to choice and text questions are returned as given."""
    if question.kind == "likert" and original_side == "b":
        return -answer
    return answer


def collect(study: Study, key: dict[str, Any], include_unconfirmed: bool = False) -> dict[str, Any]:
    """Every reader's answers joined with the key: ratings, comments and per-reader progress."""
    item_ids = [item.id for item in study.items]
    questions = {q.id: q for q in study.questions}
    ratings, comments, readers = [], [], []
    for log_path in sorted((study.root / ANSWERS_DIR).glob("*.jsonl")):
        records, problems = read_log(log_path)
        _, states, submitted = replay_log(records, item_ids)
        reader = log_path.stem
        for item_id, state in states.items():
            truth = key["items"].get(item_id, {})
            base = {
                "reader": reader,
                "item": item_id,
                "case": truth.get("case"),
                "method": truth.get("method"),
            }
            if state.comment or state.flagged:
                comments.append({**base, "flagged": state.flagged, "comment": state.comment})
            if not (state.confirmed or include_unconfirmed):
                continue
            side = truth.get("original_side", "a")
            for question, answer in state.answers.items():
                if question not in questions:
                    continue
                ratings.append(
                    {
                        **base,
                        "original_side": side,
                        "question": question,
                        "answer": answer,
                        "value": candidate_score(questions[question], answer, side),
                        "seconds": round(state.seconds, 3),
                    }
                )
        seconds = [s.seconds for s in states.values() if s.confirmed]
        readers.append(
            {
                "reader": reader,
                "confirmed": sum(s.confirmed for s in states.values()),
                "items": len(item_ids),
                "completion": sum(s.confirmed for s in states.values()) / len(item_ids),
                "submitted": submitted,
                "flagged": sum(s.flagged for s in states.values()),
                "comments": sum(bool(s.comment) for s in states.values()),
                "log_warnings": len(problems),
                "total_minutes": sum(s.seconds for s in states.values()) / 60,
                "median_seconds_per_item": float(np.median(seconds)) if seconds else math.nan,
                "mean_seconds_per_item": float(np.mean(seconds)) if seconds else math.nan,
            }
        )
    return {"ratings": ratings, "comments": comments, "readers": readers}


def _likert_ratings(ratings: list[dict], question: str) -> list[dict]:
    return [r for r in ratings if r["question"] == question and isinstance(r["value"], int | float)]


def summarize(study: Study, key: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """All statistics as plain data (see the module docstring for the definitions)."""
    methods = [m for m in key.get("methods", []) if any(r["method"] == m for r in data["ratings"])]
    likert = [q for q in study.questions if q.kind == "likert"]
    summary, paired, agreement, choices = [], [], [], []
    for question in likert:
        rows = _likert_ratings(data["ratings"], question.id)
        case_means: dict[str, dict[str, float]] = {}
        for method in methods:
            mine = [r for r in rows if r["method"] == method]
            by_reader: dict[str, list[float]] = {}
            by_case: dict[str, list[float]] = {}
            for r in mine:
                by_reader.setdefault(r["reader"], []).append(r["value"])
                by_case.setdefault(r["case"], []).append(r["value"])
            reader_means = [float(np.mean(v)) for v in by_reader.values()]
            case_means[method] = {c: float(np.mean(v)) for c, v in by_case.items()}
            across = mean_ci(reader_means)
            all_values = [r["value"] for r in mine]
            versus_zero = paired_comparison(
                list(case_means[method].values()), [0.0] * len(case_means[method]), ci="t"
            )
            summary.append(
                {
                    "method": method,
                    "question": question.id,
                    "n_readers": across["n"],
                    "n_ratings": len(all_values),
                    "mean": across["mean"],
                    "sd": across["sd"],
                    "ci_low": across["ci_low"],
                    "ci_high": across["ci_high"],
                    "ratings_sd": float(np.std(all_values, ddof=1))
                    if len(all_values) > 1
                    else math.nan,
                    "p_vs_zero": versus_zero["wilcoxon_p"],
                }
            )
        for a, b in itertools.combinations(methods, 2):
            cases = sorted(set(case_means[a]) & set(case_means[b]))
            # per case: mean over readers who scored both methods of the reader's a - b
            diffs = []
            for case in cases:
                per_reader = {}
                for r in rows:
                    if r["case"] == case and r["method"] in (a, b):
                        per_reader.setdefault(r["reader"], {})[r["method"]] = r["value"]
                both = [v[a] - v[b] for v in per_reader.values() if a in v and b in v]
                if both:
                    diffs.append(float(np.mean(both)))
            result = paired_comparison(diffs, [0.0] * len(diffs), ci="t")
            paired.append(
                {"question": question.id, "method_a": a, "method_b": b}
                | {key: result[key] for key in PAIRED_KEYS}
            )
        readers = sorted({r["reader"] for r in rows})
        items = sorted({r["item"] for r in rows})
        matrix = np.full((len(readers), len(items)), np.nan)
        for r in rows:
            matrix[readers.index(r["reader"]), items.index(r["item"])] = r["value"]
        complete = matrix[:, ~np.isnan(matrix).any(axis=0)]
        agreement.append(
            {
                "question": question.id,
                "n_readers": len(readers),
                "n_items": len(items),
                "n_items_complete": complete.shape[1],
                "icc_2_1": icc_2_1(complete.T),
                "krippendorff_alpha_ordinal": krippendorff_alpha(matrix, "ordinal"),
            }
        )
    for question in (q for q in study.questions if q.kind == "choice"):
        for method in methods:
            values = [
                r["value"]
                for r in data["ratings"]
                if r["question"] == question.id and r["method"] == method
            ]
            choices.append(
                {
                    "question": question.id,
                    "method": method,
                    **{c: values.count(c) for c in question.choices},
                }
            )
    seconds = [r["median_seconds_per_item"] for r in data["readers"]]
    item_seconds = sorted(
        {(r["reader"], r["item"]): r["seconds"] for r in data["ratings"]}.values()
    )
    timing = {
        "readers": len(data["readers"]),
        "submitted": sum(r["submitted"] for r in data["readers"]),
        "mean_completion": float(np.mean([r["completion"] for r in data["readers"]]))
        if data["readers"]
        else math.nan,
        "median_seconds_per_item": float(np.median(item_seconds)) if item_seconds else math.nan,
        "iqr_seconds_per_item": [float(v) for v in np.percentile(item_seconds, [25, 75])]
        if item_seconds
        else [math.nan, math.nan],
        "reader_median_seconds": seconds,
    }
    return {
        "study": study.name,
        "methods": methods,
        "questions": [q.id for q in likert],
        "summary": summary,
        "paired": paired,
        "agreement": agreement,
        "choices": choices,
        "readers": data["readers"],
        "completion_and_time": timing,
    }


# -- output ------------------------------------------------------------------------------------
def _csv_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def plot_scores(results: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of mean score per question and method with 95% CI error bars (PNG)."""
    from matplotlib.figure import Figure  # lazy: matplotlib takes about half a second to import

    methods, questions = results["methods"], results["questions"]
    bounds = [r[k] for r in results["summary"] for k in ("ci_low", "ci_high", "mean")]
    bounds = [b for b in bounds if math.isfinite(b)] or [0.0]
    figure = Figure(figsize=(max(4.0, 1.6 * len(questions) + 1.5), 3.6), dpi=150)
    axes = figure.add_subplot()
    width = 0.8 / max(len(methods), 1)
    for m, method in enumerate(methods):
        rows = {r["question"]: r for r in results["summary"] if r["method"] == method}
        means = np.array([rows[q]["mean"] if q in rows else np.nan for q in questions])
        low = np.array([rows[q]["ci_low"] if q in rows else np.nan for q in questions])
        high = np.array([rows[q]["ci_high"] if q in rows else np.nan for q in questions])
        errors = np.nan_to_num(np.vstack([means - low, high - means]))
        x = np.arange(len(questions)) + (m - (len(methods) - 1) / 2) * width
        axes.bar(x, means, width, yerr=errors, capsize=3, label=method)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(np.arange(len(questions)), [q.replace("_", " ") for q in questions])
    axes.set_ylim(min(-2.2, min(bounds) - 0.2), max(2.2, max(bounds) + 0.2))
    axes.set_ylabel("mean score (95% CI)")
    axes.set_title(results["study"])
    axes.legend(frameon=False, fontsize="small")
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def study_and_key(
    study_dir: str | Path, key_path: str | Path | None = None
) -> tuple[Study, dict[str, Any], Path]:
    """The study folder and its key (default: ``STUDY.key.json`` beside the folder), checked to
    belong together."""
    study = load_study(study_dir)
    key_path = Path(key_path or default_key_path(study_dir))
    key = load_key(key_path)
    unknown = [item.id for item in study.items if item.id not in key["items"]]
    if unknown:
        raise InputError(f"{key_path}: this key does not belong to the study ({len(unknown)} of "
                         f"{len(study.items)} items unknown, e.g. {unknown[0]})")
    return study, key, key_path


def analyze_study(
    study_dir: str | Path,
    output: str | Path,
    key_path: str | Path | None = None,
    include_unconfirmed: bool = False,
) -> dict[str, Any]:
    """Analyse a study folder's answer logs; write CSV tables, results.json and scores.png."""
    study, key, _ = study_and_key(study_dir, key_path)
    data = collect(study, key, include_unconfirmed)
    results = summarize(study, key, data)
    output = Path(output)
    for name in ("summary", "paired", "agreement", "readers"):
        atomic_write_text(output / f"{name}.csv", _csv_text(results[name]))
    atomic_write_text(output / "ratings.csv", _csv_text(data["ratings"]))
    atomic_write_text(output / "comments.csv", _csv_text(data["comments"]))
    atomic_write_text(output / "results.json", json.dumps(_json_safe(results), indent=1))
    plot_scores(results, output / "scores.png")
    return results
