"""Reader sessions: navigation, answers, confirm, flag, comment, timing, lock, events, resume."""

from __future__ import annotations

import pytest
from study_helpers import write_study

from medvae_engine.errors import InputError
from medvae_engine.study.persistence import read_log
from medvae_engine.study.randomize import reader_order
from medvae_engine.study.session import ReaderSession, SessionError
from medvae_engine.study.spec import load_study


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def answer_all(session, value=0):
    for question in session.questions:
        session.answer(question.id, value)


def test_session_follows_the_readers_hanging_list(small_study):
    session = ReaderSession.open(small_study, "r1")
    study = load_study(small_study)
    assert session.order == reader_order([i.id for i in study.items], study.seed, "r1")
    assert session.current.id == session.order[0]
    assert session.position == (1, 6) and session.progress == (0, 6)
    assert session.labels == ("A", "B")
    assert [q.id for q in session.questions] == ["fidelity", "clinical_features", "artifacts"]


def test_answer_confirm_and_navigation(small_study):
    session = ReaderSession.open(small_study, "r1")
    first = session.current.id
    session.answer("fidelity", 1)
    assert session.answers == {"fidelity": 1}
    with pytest.raises(SessionError, match="clinical_features, artifacts"):
        session.confirm()
    with pytest.raises(SessionError, match="one of"):
        session.answer("fidelity", 5)
    with pytest.raises(SessionError, match="unknown question"):
        session.answer("colour", 1)
    session.answer("clinical_features", 0)
    session.answer("artifacts", -2)
    session.confirm()
    assert session.progress == (1, 6) and session.current.id == session.order[1]
    session.previous()
    assert session.current.id == first and session.answers["artifacts"] == -2
    session.previous()  # stays on the first item
    assert session.position == (1, 6)
    session.go_to(5)
    session.next()  # stays on the last item
    assert session.position == (6, 6)
    with pytest.raises(SessionError, match="outside"):
        session.go_to(6)


def test_confirm_jumps_to_the_next_unconfirmed_item_wrapping_around(small_study):
    session = ReaderSession.open(small_study, "r1")
    session.go_to(4)
    answer_all(session)
    session.confirm()
    assert session.position == (6, 6)
    answer_all(session)
    session.confirm()
    assert session.position == (1, 6)


def test_flag_comment_timing_and_events(small_study):
    clock = FakeClock()
    session = ReaderSession(load_study(small_study), "r2", clock=clock)
    events = []
    unsubscribe = session.subscribe(lambda event, s: events.append((event, s.position[0])))
    clock.now += 12.5
    session.flag()
    session.comment("small lesion left lobe?")
    assert session.seconds_on() == pytest.approx(12.5)
    session.next()
    clock.now += 3.0
    session.previous()
    assert session.seconds_on(session.order[1]) == pytest.approx(3.0)
    assert events == [("flag", 1), ("comment", 1), ("navigate", 2), ("navigate", 1)]
    unsubscribe()
    session.flag(False)
    assert len(events) == 4
    resumed = ReaderSession(load_study(small_study), "r2", clock=clock)
    state = resumed.states[session.order[0]]
    assert not state.flagged and state.comment == "small lesion left lobe?"
    assert state.seconds == pytest.approx(12.5)
    assert resumed.states[session.order[1]].seconds == pytest.approx(3.0)


def test_close_saves_the_time_on_screen_and_stops_notifying(small_study):
    clock = FakeClock()
    session = ReaderSession(load_study(small_study), "r3", clock=clock)
    events = []
    session.subscribe(lambda event, s: events.append(event))
    clock.now += 7.25
    session.close()
    log = read_log(small_study / "answers" / "r3.jsonl")[0]
    assert log[-1]["type"] == "visit" and log[-1]["seconds"] == pytest.approx(7.25)
    session.flag()  # still recorded, but nobody is told any more
    assert events == []
    resumed = ReaderSession(load_study(small_study), "r3", clock=clock)
    assert resumed.seconds_on(session.order[0]) == pytest.approx(7.25)


def test_resume_rebuilds_everything_from_the_log_and_continues_at_first_open_item(small_study):
    session = ReaderSession.open(small_study, "r1")
    for value in (2, -1):
        answer_all(session, value)
        session.confirm()
    session.answer("fidelity", 1)  # answered but not confirmed
    resumed = ReaderSession.open(small_study, "r1")
    assert resumed.order == session.order
    assert resumed.progress == (2, 6)
    assert resumed.position == (3, 6)
    assert resumed.answers == {"fidelity": 1}
    assert resumed.states[session.order[0]].answers == {
        "fidelity": 2, "clinical_features": 2, "artifacts": 2}
    assert resumed.states[session.order[1]].answers["artifacts"] == -1


def test_submit_needs_every_item_and_then_locks(small_study):
    session = ReaderSession.open(small_study, "r1")
    answer_all(session)
    session.confirm()
    with pytest.raises(SessionError, match="5 of 6 items are not confirmed"):
        session.submit()
    while not session.complete:
        answer_all(session, 1)
        session.confirm()
    session.submit()
    assert session.submitted
    for action in (lambda: session.answer("fidelity", 0), session.confirm, session.flag,
                   lambda: session.comment("x"), session.submit):
        with pytest.raises(SessionError, match="locked"):
            action()
    session.previous()  # still viewable
    resumed = ReaderSession.open(small_study, "r1")
    assert resumed.submitted
    with pytest.raises(SessionError, match="locked"):
        resumed.answer("fidelity", 0)


def test_forward_only_study_refuses_previous_and_next_but_confirm_advances(tmp_path):
    session = ReaderSession.open(write_study(tmp_path / "s", 3, navigation=False), "r1")
    first = session.current.id
    for move in (session.next, session.previous):
        with pytest.raises(SessionError, match="does not allow moving"):
            move()
    assert session.current.id == first
    answer_all(session)
    session.confirm()
    assert session.position == (2, 3)


def test_unlocked_study_lets_a_submitted_reader_revise_and_resubmit(tmp_path):
    root = write_study(tmp_path / "s", 2, lock_after_submit=False)
    session = ReaderSession.open(root, "r1")
    while not session.complete:
        answer_all(session, 1)
        session.confirm()
    session.submit()
    assert session.submitted and not session.locked
    item = session.current.id
    session.answer("fidelity", -2)
    session.submit()
    resumed = ReaderSession.open(root, "r1")
    assert resumed.submitted and resumed.states[item].answers["fidelity"] == -2
    assert [r["type"] for r in read_log(root / "answers" / "r1.jsonl")[0]].count("submit") == 2


@pytest.mark.parametrize("key", ["navigation", "lock_after_submit"])
def test_study_settings_must_be_booleans(tmp_path, key):
    root = write_study(tmp_path / "s", 2, **{key: "no"})
    with pytest.raises(InputError, match=f"{key} must be true or false"):
        load_study(root)


def test_every_action_is_on_disk_before_the_call_returns(small_study):
    session = ReaderSession.open(small_study, "r3")
    path = session.study.answers_path("r3")
    session.answer("fidelity", -2)
    records, _ = read_log(path)
    assert records[0]["type"] == "start" and records[0]["order"] == session.order
    assert records[-1] | {"t": None} == {"v": 1, "type": "answer", "t": None,
                                         "item": session.order[0], "question": "fidelity",
                                         "value": -2}


def test_log_for_another_study_is_refused(small_study, tmp_path):
    from study_helpers import write_study

    ReaderSession.open(small_study, "r1").answer("fidelity", 0)
    other = write_study(tmp_path / "other", 4)
    (other / "answers").mkdir()
    (other / "answers" / "r1.jsonl").write_bytes(
        (small_study / "answers" / "r1.jsonl").read_bytes())
    with pytest.raises(SessionError, match="different set of items"):
        ReaderSession.open(other, "r1")


def test_unsafe_reader_ids_are_refused(small_study):
    from medvae_engine.errors import InputError

    for bad in ("../x", "", "a/b", ".hidden"):
        with pytest.raises(InputError, match="reader id"):
            ReaderSession.open(small_study, bad)
