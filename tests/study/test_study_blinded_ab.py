"""Blinded A/B studies analysed as candidate relative to original: a real study folder (bicubic and
nearest x4 baselines on real CT/MR slices) read by simulated readers who judge the images, not the
panes."""

from __future__ import annotations

import json

import pytest
import yaml
from study_helpers import real_originals

from medvae_engine.study import ReaderSession, analyze_study, create_study, spec_from_folders
from medvae_engine.study.create import default_key_path

# what the simulated readers think of each candidate relative to the original, per question
OPINION = {"bicubic4": -1, "nearest4": -2}


@pytest.fixture(scope="module")
def ab_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ab")
    spec = spec_from_folders(real_originals(root / "originals"),
                             {"bicubic4": {"codec": "bicubic@4"},
                              "nearest4": {"codec": "nearest@4"}},
                             name="ab", seed=11, display="blinded_ab")
    return create_study(spec, root / "study")


def read_as(study, reader: str, key: dict) -> None:
    """Answer every B-versus-A question from the reader's opinion of the candidate: the answer is
    the opinion where the candidate is B (original A) and its negation where it is A."""
    session = ReaderSession.open(study, reader)
    while not session.complete:
        truth = key[session.current.id]
        opinion = OPINION[truth["method"]]
        for question in session.questions:
            session.answer(question.id, opinion if truth["original_side"] == "a" else -opinion)
        session.confirm()
    session.submit()


def test_a_reader_preferring_bicubic_over_nearest_is_scored_so(ab_study, tmp_path):
    key = json.loads(default_key_path(ab_study).read_text())["items"]
    for method in OPINION:  # the original on A as often as on B within each method (4 cases)
        sides = [v["original_side"] for v in key.values() if v["method"] == method]
        assert sides.count("a") == sides.count("b") == 2
    for reader in ("r1", "r2"):
        read_as(ab_study, reader, key)
    results = analyze_study(ab_study, tmp_path / "report")
    means = {(r["method"], r["question"]): r["mean"] for r in results["summary"]}
    for question in ("fidelity", "clinical_features", "artifacts"):
        assert means[("bicubic4", question)] == pytest.approx(-1.0)
        assert means[("nearest4", question)] == pytest.approx(-2.0)
    paired = {r["question"]: r for r in results["paired"]}
    assert paired["fidelity"]["method_a"] == "bicubic4"
    assert paired["fidelity"]["mean_difference"] == pytest.approx(1.0)
    ratings = (tmp_path / "report" / "ratings.csv").read_text().splitlines()
    assert ratings[0].split(",")[:8] == ["reader", "item", "case", "method", "original_side",
                                         "question", "answer", "value"]


def test_blinded_ab_wording_reaches_the_readers_study_file(ab_study):
    public = yaml.safe_load((ab_study / "study.yaml").read_text())
    assert public["display"] == "blinded_ab"
    for question in public["questions"]:
        assert "image B compare with image A" in question["text"]
        assert question["anchors"][-2].startswith("A much better")
        assert question["anchors"][2].startswith("B much better")
    session = ReaderSession.open(ab_study, "wording")
    assert session.labels == ("A", "B")
    assert all("original" not in q.text.lower() for q in session.questions)
