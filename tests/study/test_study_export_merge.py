"""`medvae study export` and `medvae study merge` on real study folders built from real CT/MR slices
with the bicubic and nearest x4 baselines."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil

import pytest
from study_helpers import real_originals

from medvae_engine.cli.study import add_study_arguments, run_study
from medvae_engine.errors import InputError, OutputError
from medvae_engine.study import ReaderSession, analyze_study, create_study, spec_from_folders
from medvae_engine.study.create import default_key_path
from medvae_engine.study.export import export_answers
from medvae_engine.study.merge import merge_logs
from medvae_engine.study.spec import load_study

METHODS = {"bicubic4": {"codec": "bicubic@4"},
           "nearest4": {"codec": "nearest@4"}}


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medvae")
    add_study_arguments(parser.add_subparsers(dest="command"))
    return run_study(parser.parse_args(argv))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two real studies from the same images: the one read, and another (different seed)."""
    root = tmp_path_factory.mktemp("studies")
    originals = real_originals(root / "originals")
    studies = {}
    for name, seed in (("study", 4), ("other", 5)):
        spec = spec_from_folders(originals, METHODS, name=name, seed=seed, display="blinded_ab")
        studies[name] = create_study(spec, root / name)
    return studies


@pytest.fixture
def study(made, tmp_path):
    """A fresh copy of the study with its key beside it."""
    copy = shutil.copytree(made["study"], tmp_path / "study")
    shutil.copy(default_key_path(made["study"]), default_key_path(copy))
    return copy


def ticking():
    """A clock advancing 2.5 s per reading, so times on items are known."""
    counter = itertools.count()
    return lambda: 2.5 * next(counter)


def read(study, reader: str, answers: dict[str, int], n_items: int | None = None) -> None:
    """Answer (question -> value) and confirm the first ``n_items`` items of the reader's list."""
    session = ReaderSession(load_study(study), reader, clock=ticking())
    for _ in range(n_items or len(session.order)):
        for question, value in answers.items():
            session.answer(question, value)
        session.confirm()
    session.close()


def test_export_lists_every_readers_latest_answers_with_the_key(study, tmp_path, capsys):
    key = json.loads(default_key_path(study).read_text())["items"]
    read(study, "r1", {"fidelity": 1, "clinical_features": 0, "artifacts": -1})
    session = ReaderSession(load_study(study), "r2", clock=ticking())
    first = session.current.id
    session.answer("fidelity", 2)
    session.answer("fidelity", -2)  # revised: the latest answer counts
    session.flag()
    session.comment("edge blur")
    session.close()
    out = tmp_path / "exports" / "answers.csv"
    assert run(["study", "export", str(study), "-o", str(out)]) == 0
    assert "16 rows" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * len(key) == 16
    assert list(rows[0])[:5] == ["reader", "item", "case", "method", "original_side"]
    for row in rows:
        truth = key[row["item"]]
        assert (row["case"], row["method"], row["original_side"]) == (
            truth["case"], truth["method"], truth["original_side"])
    r1 = [r for r in rows if r["reader"] == "r1"]
    assert all(r["confirmed"] == "True" and r["fidelity"] == "1" for r in r1)
    sign = {"a": 1, "b": -1}
    for row in r1:  # the same B-versus-A answer is +-1 relative to the original by side
        assert int(row["fidelity_vs_original"]) == sign[row["original_side"]]
        assert int(row["artifacts_vs_original"]) == -sign[row["original_side"]]
        assert float(row["seconds_on_item"]) == pytest.approx(2.5)
    r2 = {r["item"]: r for r in rows if r["reader"] == "r2"}
    assert r2[first]["fidelity"] == "-2" and r2[first]["clinical_features"] == ""
    assert r2[first]["flagged"] == "True" and r2[first]["comment"] == "edge blur"
    assert int(r2[first]["fidelity_vs_original"]) == -2 * sign[r2[first]["original_side"]]
    assert r2[first]["confirmed"] == "False"
    assert all(r["fidelity"] == "" for i, r in r2.items() if i != first)


def test_export_refuses_to_write_inside_the_study_folder(study, capsys):
    with pytest.raises(OutputError, match="outside the study folder"):
        export_answers(study, study / "answers.csv")
    assert run(["study", "export", str(study), "-o", str(study / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (study / "x.csv").exists()
    default_key_path(study).unlink()
    assert run(["study", "export", str(study), "-o", str(study.parent / "y.csv")]) == 2
    assert "study key not found" in capsys.readouterr().err


def test_logs_read_at_two_sites_merge_into_one_study(made, study, tmp_path, capsys):
    central = study
    sites = {s: shutil.copytree(made["study"], tmp_path / s) for s in ("site1", "site2")}
    read(sites["site1"], "r1", {"fidelity": 1, "clinical_features": 1, "artifacts": 1}, 3)
    read(sites["site2"], "r2", {"fidelity": -1, "clinical_features": -1, "artifacts": -1})
    assert run(["study", "merge", str(central), str(sites["site1"]),
                str(sites["site2"] / "answers" / "r2.jsonl")]) == 0
    assert capsys.readouterr().out.count("new records") == 2
    for reader, site in (("r1", "site1"), ("r2", "site2")):
        assert (central / "answers" / f"{reader}.jsonl").read_bytes() == (
            sites[site] / "answers" / f"{reader}.jsonl").read_bytes()
    merged_before = (central / "answers" / "r1.jsonl").read_bytes()
    # r1 goes on reading at site 1; merging again only appends what is new
    read(sites["site1"], "r1", {"fidelity": 2, "clinical_features": 2, "artifacts": 2})
    steps = merge_logs(central, [sites["site1"], sites["site2"]])
    assert [(s.reader, bool(s.new_records)) for s in steps] == [("r1", True), ("r2", False)]
    after = (central / "answers" / "r1.jsonl").read_bytes()
    assert after.startswith(merged_before) and after == (
        sites["site1"] / "answers" / "r1.jsonl").read_bytes()
    results = analyze_study(central, tmp_path / "report")
    assert {r["reader"]: r["confirmed"] for r in results["readers"]} == {"r1": 8, "r2": 8}


def test_merge_refuses_logs_of_another_study_and_diverged_logs(made, study, tmp_path, capsys):
    other = shutil.copytree(made["other"], tmp_path / "other")
    read(other, "r9", {"fidelity": 0, "clinical_features": 0, "artifacts": 0}, 1)
    before = sorted(p.name for p in (study / "answers").glob("*")) if (
        study / "answers").exists() else []
    for source in (other, other / "answers" / "r9.jsonl", other / "answers"):
        code = run(["study", "merge", str(study), str(source)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert "another study" in err or "different study" in err
    assert before == (sorted(p.name for p in (study / "answers").glob("*")) if (
        study / "answers").exists() else [])
    # one reader id read at two sites gives two different logs: refused, nothing written
    site = shutil.copytree(made["study"], tmp_path / "site")
    read(site, "r1", {"fidelity": 1, "clinical_features": 1, "artifacts": 1}, 1)
    read(study, "r1", {"fidelity": -2, "clinical_features": -2, "artifacts": -2}, 1)
    log = (study / "answers" / "r1.jsonl").read_bytes()
    read(site, "r7", {"fidelity": 0, "clinical_features": 0, "artifacts": 0}, 1)
    with pytest.raises(InputError, match="reader 'r1' has a different log"):
        merge_logs(study, [site])
    assert (study / "answers" / "r1.jsonl").read_bytes() == log
    assert not (study / "answers" / "r7.jsonl").exists()  # checked all before writing any
