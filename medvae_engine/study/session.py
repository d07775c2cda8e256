"""A reader's session: the model a reading widget observes (no Qt).

All state is rebuilt from the reader's append-only log, and every change is appended and fsynced
before the session moves on, so a crash loses at most the answer being entered. Observers register a
plain callback ``callback(event, session)``; events are "answer", "confirm", "navigate", "flag",
"comment" and "submit".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medvae_engine.errors import InputError
from medvae_engine.study.persistence import AnswerLog
from medvae_engine.study.randomize import reader_order
from medvae_engine.study.spec import (
    Question,
    Study,
    StudyItem,
    check_no_key,
    check_reader_id,
    load_study,
    manifest_checksum,
)

Callback = Callable[[str, "ReaderSession"], None]
LOG_VERSION = 1


class SessionError(InputError):
    """An action the session cannot take now (missing answers, submitted study, wrong log)."""


@dataclasses.dataclass
class ItemState:
    """What the reader has done on one item so far."""

    answers: dict[str, Any] = dataclasses.field(default_factory=dict)
    confirmed: bool = False
    flagged: bool = False
    comment: str = ""
    seconds: float = 0.0


def replay_log(
    records: list[dict[str, Any]], item_ids: list[str]
) -> tuple[list[str] | None, dict[str, ItemState], bool]:
    """Rebuild (logged order or None, state per item, submitted) from a reader's log records."""
    start = next((r for r in records if r.get("type") == "start"), None)
    order = list(start["order"]) if start and isinstance(start.get("order"), list) else None
    states = {item_id: ItemState() for item_id in item_ids}
    submitted = False
    for record in records:
        kind, state = record.get("type"), states.get(record.get("item"))
        if kind == "submit":
            submitted = True
        elif state is None:
            continue
        elif kind == "answer" and "question" in record:
            state.answers[record["question"]] = record["value"]
        elif kind == "confirm":
            state.confirmed = True
        elif kind == "flag":
            state.flagged = bool(record.get("flagged", True))
        elif kind == "comment":
            state.comment = str(record.get("text", ""))
        elif kind == "visit":
            state.seconds += float(record.get("seconds", 0.0))
    return order, states, submitted


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReaderSession:
    """One reader working through their hanging list of a prepared study."""

    def __init__(self, study: Study, reader_id: str, clock: Callable[[], float] = time.monotonic):
        check_no_key(study.root)  # a folder holding its answer key would unblind the reader
        self.study = study
        self.reader_id = check_reader_id(reader_id)
        self._clock = clock
        self._log = AnswerLog(study.answers_path(reader_id))
        self._callbacks: list[Callback] = []
        records, self.warnings = self._log.read()
        item_ids = [item.id for item in study.items]
        logged_order, self.states, self.submitted = replay_log(records, item_ids)
        if logged_order is not None and sorted(logged_order) != sorted(item_ids):
            raise SessionError(
                f"{self._log.path}: this log was written for a different set of items; "
                "move it away to start over"
            )
        self.order = logged_order or reader_order(item_ids, study.seed, self.reader_id)
        if logged_order is None:
            self._write("start", reader=self.reader_id, study=study.name, order=self.order,
                        manifest_sha256=manifest_checksum(study.root))
        self.index = self._first_open_index()
        self._shown_at = clock()

    @classmethod
    def open(cls, study_dir: str | Path, reader_id: str) -> ReaderSession:
        """Open (or resume) the session of ``reader_id`` in a prepared study folder."""
        return cls(load_study(study_dir), reader_id)

    def _first_open_index(self) -> int:
        for i, item_id in enumerate(self.order):
            if not self.states[item_id].confirmed:
                return i
        return len(self.order) - 1

    # -- observing --------------------------------------------------------------------------------
    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(event, session)`` after every change; returns an unsubscribe function."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def _emit(self, event: str) -> None:
        for callback in list(self._callbacks):
            callback(event, self)

    def _write(self, kind: str, **fields: Any) -> None:
        self._log.append({"v": LOG_VERSION, "type": kind, "t": _now(), **fields})

    # -- what a view shows ------------------------------------------------------------------------
    @property
    def questions(self) -> tuple[Question, ...]:
        """The questions asked about every item."""
        return self.study.questions

    @property
    def labels(self) -> tuple[str, str]:
        """Captions of the two panes ("Original"/"Reconstruction" or "A"/"B")."""
        return self.study.labels

    @property
    def current(self) -> StudyItem:
        """The item on screen."""
        return self.study.item(self.order[self.index])

    @property
    def state(self) -> ItemState:
        """What the reader has done on the item on screen."""
        return self.states[self.order[self.index]]

    @property
    def answers(self) -> dict[str, Any]:
        """Answers given so far on the item on screen (question id -> value)."""
        return dict(self.state.answers)

    @property
    def progress(self) -> tuple[int, int]:
        """(items confirmed, items in total)."""
        return sum(s.confirmed for s in self.states.values()), len(self.order)

    @property
    def position(self) -> tuple[int, int]:
        """(1-based position of the item on screen, items in total)."""
        return self.index + 1, len(self.order)

    @property
    def complete(self) -> bool:
        """True when every item is confirmed."""
        done, total = self.progress
        return done == total

    def missing(self) -> list[str]:
        """Ids of required questions not yet answered on the item on screen."""
        return [q.id for q in self.questions if q.required and q.id not in self.state.answers]

    def seconds_on(self, item_id: str | None = None) -> float:
        """Reading time on an item (default: the one on screen), including the current view."""
        item_id = item_id or self.order[self.index]
        running = self._clock() - self._shown_at if item_id == self.order[self.index] else 0.0
        return self.states[item_id].seconds + running

    # -- what a reader does ------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        """True once the reader submitted a study that locks answers after submission."""
        return self.submitted and self.study.lock_after_submit

    def _check_open(self) -> None:
        if self.locked:
            raise SessionError(f"{self._log.path}: the study was submitted; answers are locked")

    def answer(self, question_id: str, value: Any) -> None:
        """Record an answer to a question on the item on screen (saved before returning)."""
        self._check_open()
        question = next((q for q in self.questions if q.id == question_id), None)
        if question is None:
            raise SessionError(f"unknown question {question_id!r}")
        try:
            value = question.check_value(value)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        item_id = self.order[self.index]
        self._write("answer", item=item_id, question=question_id, value=value)
        self.states[item_id].answers[question_id] = value
        self._emit("answer")

    def confirm(self) -> None:
        """Mark the item on screen done and move to the next unconfirmed item."""
        self._check_open()
        missing = self.missing()
        if missing:
            raise SessionError(f"answer {', '.join(missing)} before confirming this item")
        item_id = self.order[self.index]
        self._write("confirm", item=item_id)
        self.states[item_id].confirmed = True
        self._emit("confirm")
        n = len(self.order)
        for step in range(1, n):
            candidate = (self.index + step) % n
            if not self.states[self.order[candidate]].confirmed:
                self.go_to(candidate)
                return

    def go_to(self, index: int) -> None:
        """Show the item at ``index`` of the hanging list, saving the time spent on this one."""
        if not 0 <= index < len(self.order):
            raise SessionError(f"item position {index + 1} is outside 1..{len(self.order)}")
        if index == self.index:
            return
        self._save_visit()
        self.index = index
        self._emit("navigate")

    def next(self) -> None:
        """Show the next item of the hanging list (stays on the last one)."""
        self._check_navigation()
        self.go_to(min(self.index + 1, len(self.order) - 1))

    def previous(self) -> None:
        """Show the previous item of the hanging list (stays on the first one)."""
        self._check_navigation()
        self.go_to(max(self.index - 1, 0))

    def _check_navigation(self) -> None:
        if not self.study.navigation:
            raise SessionError("this study does not allow moving between items")

    def _save_visit(self) -> None:
        now = self._clock()
        seconds, self._shown_at = now - self._shown_at, now
        item_id = self.order[self.index]
        if not self.locked:
            self._write("visit", item=item_id, seconds=round(seconds, 3))
        self.states[item_id].seconds += seconds

    def close(self) -> None:
        """Save the time spent on the item on screen and stop notifying (the reader stops here)."""
        if not self.locked:
            self._save_visit()
        self._callbacks.clear()

    def flag(self, flagged: bool = True) -> None:
        """Flag (or unflag) the item on screen for the coordinator's attention."""
        self._check_open()
        item_id = self.order[self.index]
        self._write("flag", item=item_id, flagged=bool(flagged))
        self.states[item_id].flagged = bool(flagged)
        self._emit("flag")

    def comment(self, text: str) -> None:
        """Set the free-text comment on the item on screen (the latest comment wins)."""
        self._check_open()
        item_id = self.order[self.index]
        self._write("comment", item=item_id, text=str(text))
        self.states[item_id].comment = str(text)
        self._emit("comment")

    def submit(self) -> None:
        """Finish the study: needs every item confirmed; afterwards answers are locked."""
        self._check_open()
        done, total = self.progress
        if done < total:
            raise SessionError(f"{total - done} of {total} items are not confirmed yet")
        self._save_visit()
        self._write("submit")
        self.submitted = True
        self._emit("submit")
