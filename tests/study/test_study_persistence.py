"""Answer logs: append-only, torn lines tolerated, and nothing lost when a session is SIGKILLed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from medvae_engine.study.persistence import AnswerLog, TornLogWarning, read_log
from medvae_engine.study.session import ReaderSession
from medvae_engine.study.spec import load_study

REPO = Path(__file__).resolve().parents[2]


def test_append_and_read_back(tmp_path):
    log = AnswerLog(tmp_path / "answers" / "r.jsonl")
    log.append({"type": "answer", "value": 1, "text": "naïve"})
    log.append({"type": "confirm"})
    records, problems = read_log(log.path)
    assert records == [{"type": "answer", "value": 1, "text": "naïve"}, {"type": "confirm"}]
    assert problems == []
    assert read_log(tmp_path / "missing.jsonl") == ([], [])


def test_appends_never_rewrite_earlier_bytes(tmp_path):
    log = AnswerLog(tmp_path / "r.jsonl")
    log.append({"n": 1})
    before = log.path.read_bytes()
    inode = os.stat(log.path).st_ino
    log.append({"n": 2})
    assert log.path.read_bytes().startswith(before)
    assert os.stat(log.path).st_ino == inode


def test_torn_last_line_is_skipped_with_a_warning_and_never_merges(small_study):
    session = ReaderSession.open(small_study, "r1")
    for question in session.questions:
        session.answer(question.id, 1)
    session.confirm()
    path = session.study.answers_path("r1")
    with open(path, "ab") as f:
        f.write(b'{"v":1,"type":"answer","item":"item_00')  # half a line, as a kill leaves it
    with pytest.warns(TornLogWarning, match="torn last line"):
        resumed = ReaderSession.open(small_study, "r1")
    assert resumed.progress == (1, 6)
    assert any("torn" in w for w in resumed.warnings)
    resumed.answer("fidelity", -1)  # the fragment gets its own line; this record stays intact
    with pytest.warns(TornLogWarning, match="unreadable line"):
        again = ReaderSession.open(small_study, "r1")
    assert again.answers == {"fidelity": -1}
    assert again.progress == (1, 6)


CHILD = """
import sys
from medvae_engine.study.session import ReaderSession
session = ReaderSession.open(sys.argv[1], "killed")
while not session.complete:
    item = session.current.id
    value = int(item.split("_")[1]) % 5 - 2
    for question in session.questions:
        session.answer(question.id, value)
    session.confirm()
    print(item, flush=True)
"""


def expected_value(item_id: str) -> int:
    return int(item_id.split("_")[1]) % 5 - 2


def run_and_kill(study: Path, rng: random.Random) -> list[str]:
    """Run a reading session in a subprocess and SIGKILL it at a random point; items it reported."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(study)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    reported = [child.stdout.readline().strip() for _ in range(rng.randint(2, 30))]
    time.sleep(rng.uniform(0.0, 0.01))
    child.send_signal(signal.SIGKILL)
    reported += [line.strip() for line in child.stdout.read().splitlines() if line.strip()]
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the kill should land mid-session"
    return reported


@pytest.mark.slow
def test_sigkill_mid_session_loses_nothing_and_keeps_the_order(tmp_path):
    from study_helpers import write_study

    study_dir = write_study(tmp_path / "study", 300)
    study = load_study(study_dir)
    rng = random.Random(1234)
    confirmed_so_far: list[str] = []
    order = None
    for _ in range(2):
        confirmed_so_far += run_and_kill(study_dir, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornLogWarning)  # a kill may tear the last line
            session = ReaderSession(study, "killed")
        order = order or session.order
        assert session.order == order  # the hanging list survives every kill
        for item in confirmed_so_far:  # every confirmation reported to the user is on disk
            state = session.states[item]
            assert state.confirmed
            assert set(state.answers.values()) == {expected_value(item)}
        done = [i for i in order if session.states[i].confirmed]
        assert done == order[: len(done)]  # confirmed items form a prefix: nothing skipped
        assert len(done) >= len(confirmed_so_far)
        assert session.current.id == order[len(done)]  # resumes at the first open item
    records, _ = read_log(study.answers_path("killed"))
    confirms = [r["item"] for r in records if r.get("type") == "confirm"]
    assert len(confirms) == len(set(confirms))  # no item was confirmed twice across restarts
