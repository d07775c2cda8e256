"""`medvae study` commands through argparse, as the lead wires them into the `medvae` CLI."""

from __future__ import annotations

import argparse
import json
import shutil

import pydicom.data
import pytest

from medvae_engine.cli.study import add_study_arguments, run_study
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.study.session import ReaderSession


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medvae")
    add_study_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.func is run_study
    return run_study(args)


def test_commands_can_also_hang_directly_under_a_parser():
    parser = argparse.ArgumentParser(prog="medvae-study")
    add_study_arguments(parser)
    args = parser.parse_args(["analyze", "S", "-o", "OUT", "--key", "K"])
    assert (args.study_command, args.study, args.output, args.key) == ("analyze", "S", "OUT", "K")


@pytest.fixture
def originals(tmp_path):
    folder = tmp_path / "originals"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom.data.get_testdata_file(name), folder / name)
    return folder


def test_create_status_validate_analyze(originals, tmp_path, capsys):
    method = tmp_path / "halved"
    for path in originals.iterdir():
        volume = read_volume(path)
        write_volume(volume.with_array(volume.array / 2), method / f"{path.stem}.nii.gz")
    study = tmp_path / "study"
    assert run(["study", "create", "--originals", str(originals), "--method", f"halved={method}",
                "--codec", "bicubic4=bicubic:4", "--display", "blinded_ab", "--seed", "3",
                "-o", str(study)]) == 0
    assert run(["study", "validate", str(study)]) == 0
    key = json.loads((tmp_path / "study.key.json").read_text())["items"]  # beside the folder
    for reader in ("r1", "r2"):
        session = ReaderSession.open(study, reader)
        while not session.complete:
            # r1 finds every candidate slightly worse than the original, wherever it is shown
            b_versus_a = -1 if key[session.current.id]["original_side"] == "a" else 1
            for question in session.questions:
                session.answer(question.id, b_versus_a if reader == "r1" else 0)
            session.confirm()
    capsys.readouterr()
    assert run(["study", "status", str(study)]) == 0
    assert capsys.readouterr().out.splitlines() == ["r1: 4/4 confirmed", "r2: 4/4 confirmed"]
    out = tmp_path / "analysis"
    assert run(["study", "analyze", str(study), "-o", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["methods"]) == ["bicubic4", "halved"]
    assert {r["mean"] for r in results["summary"]} == {-0.5}
    assert (out / "scores.png").stat().st_size > 1000


def test_user_errors_exit_2_with_one_line(originals, tmp_path, capsys):
    code = run(["study", "create", "--originals", str(originals), "--method",
                f"m={tmp_path / 'absent'}", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "absent" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()
    assert run(["study", "create", "-o", str(tmp_path / "s")]) == 2
    assert run(["study", "analyze", str(tmp_path / "nowhere"), "-o", str(tmp_path / "a")]) == 2
    assert "study.yaml: file not found" in capsys.readouterr().err


def test_create_shows_a_progress_bar_with_eta_from_the_first_item(originals, tmp_path, capsys):
    """`medvae study create` through the real CLI: a bar on stderr (even in a log) whose line
    after the first item already has a rate and an ETA, and which ends at all items."""
    from medvae_engine.cli import main

    assert main(["study", "create", "--originals", str(originals), "--codec",
                 "bicubic4=bicubic:4", "--codec", "bilinear4=bilinear:4", "-o",
                 str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    lines = [part for line in captured.err.splitlines() for part in line.split("\r") if part.strip()]
    first = next(line for line in lines if "1/4" in line)
    assert first.startswith("study create") and "<?" not in first and "item/s" in first
    assert "4/4" in lines[-1] and "100%" in lines[-1]
    assert "study with 4 items written" in captured.out
