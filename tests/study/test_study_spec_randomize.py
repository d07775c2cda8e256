"""Spec validation, default questions and per-reader randomisation properties."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from medvae_engine.errors import InputError
from medvae_engine.study.randomize import original_sides, reader_order, shuffled
from medvae_engine.study.spec import (
    DEFAULT_AB_QUESTIONS,
    DEFAULT_QUESTIONS,
    load_spec,
    parse_questions,
    parse_spec,
)


def test_default_questions_are_the_papers_three_with_anchors_for_every_score():
    assert [q.id for q in DEFAULT_QUESTIONS] == ["fidelity", "clinical_features", "artifacts"]
    for question in DEFAULT_QUESTIONS:
        assert question.scale == (-2, -1, 0, 1, 2)
        assert sorted(question.anchors) == [-2, -1, 0, 1, 2]
        assert len(set(question.anchors.values())) == 5


def test_spec_parses_files_codecs_models_and_custom_questions(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        """
name: demo
seed: 3
display: blinded_ab
navigation: false
methods:
  bicubic: {codec: bicubic, factor: 4}
questions:
  - default
  - {id: diagnostic, text: 'Diagnostic quality?', kind: choice, choices: [good, poor]}
  - {id: notes, text: 'Anything else?', kind: text}
  - {id: sharp, text: Sharpness of B compared with A, scale: [-3, 3]}
cases:
  - id: c1
    original: orig/c1.nii.gz
    candidates: {vae: vae/c1.nii.gz, starter: {model: starter_4_1_2d}}
"""
    )
    spec = load_spec(spec_file)
    assert spec.display == "blinded_ab" and spec.seed == 3
    assert not spec.navigation and spec.lock_after_submit  # forward only; locked by default
    assert spec.methods == ["bicubic", "vae", "starter"]
    case = spec.cases[0]
    assert case.candidates["bicubic"] == {"codec": "bicubic@4"}  # the older form, normalised
    assert spec.resolve(case.candidates["vae"]) == tmp_path / "vae/c1.nii.gz"
    ids = [q.id for q in spec.questions]
    assert ids == ["fidelity", "clinical_features", "artifacts", "diagnostic", "notes", "sharp"]
    sharp = spec.questions[-1]
    assert sharp.scale == (-3, -2, -1, 0, 1, 2, 3)
    assert not spec.questions[4].required  # free text is optional by default


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cases": []}, "non-empty"),
        ({"cases": [{"original": "a"}]}, "no candidates"),
        ({"cases": [{"original": "a", "candidates": {"m": {"codec": "bicubic"}}}]}, "factor"),
        ({"cases": [{"original": "a", "candidates": {"m": "b"}}], "display": "tv"}, "display"),
        ({"cases": [{"id": "x", "original": "a", "candidates": {"m": "b"}}] * 2}, "duplicate"),
        ({"cases": [{"original": "a", "candidates": {"m": "b"}}],
          "questions": [{"id": "q", "text": "t", "kind": "likert", "scale": [2, 1]}]}, "scale"),
        ({"cases": [{"original": "a", "candidates": {"m": "b"}}], "colour": 1}, "unknown keys"),
    ],
)
def test_invalid_specs_give_one_clear_error_naming_the_file(data, message):
    with pytest.raises(InputError, match=message) as info:
        parse_spec(data, "my_spec.yaml")
    assert str(info.value).startswith("my_spec.yaml:")
    assert "\n" not in str(info.value)


def test_likert_values_are_checked():
    question = DEFAULT_QUESTIONS[0]
    assert question.check_value(2) == 2 and question.check_value(-1.0) == -1
    for bad in (3, -3, 0.5, True, "1"):
        with pytest.raises((ValueError, TypeError)):
            question.check_value(bad)


ITEMS = [f"item_{i:03d}" for i in range(1, 51)]


def test_every_reader_sees_every_item_exactly_once():
    for reader in ("r1", "r2", "alice", "bob.smith"):
        order = reader_order(ITEMS, 11, reader)
        assert sorted(order) == sorted(ITEMS)
        assert len(order) == len(set(order))


def test_same_reader_same_order_regardless_of_input_order():
    assert reader_order(ITEMS, 11, "r1") == reader_order(list(reversed(ITEMS)), 11, "r1")


def test_orders_differ_across_readers_and_studies():
    orders = {tuple(reader_order(ITEMS, 11, f"r{i}")) for i in range(10)}
    assert len(orders) == 10
    assert reader_order(ITEMS, 11, "r1") != reader_order(ITEMS, 12, "r1")


def test_item_positions_are_balanced_across_many_readers():
    # each item's mean position over 400 readers is near the middle: no systematic order effect
    positions = collections.defaultdict(list)
    for i in range(400):
        for position, item in enumerate(reader_order(ITEMS, 5, f"reader{i}")):
            positions[item].append(position)
    means = [sum(p) / len(p) for p in positions.values()]
    expected, sd_of_mean = (len(ITEMS) - 1) / 2, (len(ITEMS) / (12**0.5)) / 400**0.5
    assert all(abs(m - expected) < 5 * sd_of_mean for m in means)


def test_order_is_stable_across_processes():
    import subprocess
    import sys

    code = ("from medvae_engine.study.randomize import reader_order;"
            f"print(','.join(reader_order({ITEMS!r}, 11, 'r1')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""},
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip().split(",") == reader_order(ITEMS, 11, "r1")


def test_sides_and_numbering_are_seeded():
    sides = original_sides(200, 4)
    assert sides == original_sides(200, 4) and set(sides) == {0, 1}
    assert sides != original_sides(200, 5) and sides != original_sides(200, 4, "sides:other")
    for n in range(1, 40):  # the original on A as often as on B, +-1
        for seed in range(5):
            drawn = original_sides(n, seed, f"sides:m{n}")
            assert len(drawn) == n and abs(drawn.count(0) - drawn.count(1)) <= 1
    assert sides[:100] != [0, 1] * 50 and sides[:100] != [1, 0] * 50  # not alternating
    assert shuffled(list(range(20)), 4, "items") == shuffled(list(range(20)), 4, "items")
    assert shuffled(list(range(20)), 4, "items") != list(range(20))


def test_the_documented_example_spec_is_valid():
    import medvae_engine.study.spec as spec_module

    example = spec_module.__doc__.split("::", 1)[1]
    import yaml

    spec = parse_spec(yaml.safe_load(example), "docstring")
    assert spec.methods == ["bicubic4", "starter", "medvae"]
    assert spec.questions == DEFAULT_QUESTIONS


def test_blinded_ab_questions_compare_b_with_a():
    spec = parse_spec({"display": "blinded_ab", "cases": [
        {"original": "o.dcm", "candidates": {"m": "m.nii.gz"}}]}, "s.yaml")
    assert spec.questions == DEFAULT_AB_QUESTIONS
    assert [q.id for q in DEFAULT_AB_QUESTIONS] == [q.id for q in DEFAULT_QUESTIONS]
    for question in DEFAULT_AB_QUESTIONS:
        assert "B" in question.text and " A" in question.text and "original" not in question.text
        assert question.scale == (-2, -1, 0, 1, 2)
        assert question.anchors[-2].startswith("A much better")
        assert question.anchors[2].startswith("B much better")
        assert question.anchors[0].startswith("Equivalent")
    lopsided = [{"id": "q", "text": "How good is B?", "scale": [0, 1, 2, 3]}]
    with pytest.raises(InputError, match="symmetric about 0"):
        parse_questions(lopsided, "s.yaml", "blinded_ab")
    assert parse_questions(lopsided, "s.yaml")[0].scale == (0, 1, 2, 3)
