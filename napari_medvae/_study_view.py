"""Reader-study view logic without Qt: the pair of layers an item shows, the active question and
what each keyboard shortcut does to the `ReaderSession`.

The view never learns which method made an image: it only gets the study's neutral item files and
pane captions ("Original"/"Reconstruction" or "A"/"B").
"""

from __future__ import annotations

from typing import Any

from medvae_engine.imaging.io import read_volume
from medvae_engine.study import Question, ReaderSession, SessionError

from ._display import shared_window
from ._layers import META_KEY, volume_to_layer_data

PANE_KIND = "study"

# key sequence (Qt spelling) -> (action, argument); digits pick the n-th answer of the active question
SHORTCUTS: dict[str, tuple[str, int]] = {
    **{str(n): ("choose", n) for n in range(1, 10)},
    "Up": ("question", -1),
    "Backtab": ("question", -1),
    "Down": ("question", 1),
    "Tab": ("question", 1),
    "Return": ("confirm", 0),
    "Enter": ("confirm", 0),
    "Left": ("go", -1),
    "PgUp": ("go", -1),
    "Right": ("go", 1),
    "PgDown": ("go", 1),
    "F": ("flag", 0),
    "Ctrl+Return": ("submit", 0),
}

HELP = ("keys: 1-5 answer (-2..+2) | Up/Down or Tab: question | Enter: confirm and next | "
        "Left/Right or PageUp/PageDown: previous/next | F: flag | Ctrl+Enter: submit")


def options(question: Question) -> list[tuple[str, Any]]:
    """(caption, value) of each answer a question offers, in key order (1, 2, ...)."""
    if question.kind == "likert":
        return [(f"{v:+d}" if v else "0", v) for v in question.scale]
    if question.kind == "choice":
        return [(c, c) for c in question.choices]
    return []


def anchor_text(question: Question, value: Any) -> str:
    """The scale anchor describing an answer ('' when none)."""
    return question.anchors.get(value, "") if question.kind == "likert" else ""


def format_seconds(seconds: float) -> str:
    """m:ss for the elapsed-time display."""
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def pair_layer_data(session: ReaderSession) -> list[tuple]:
    """Layer data of the item on screen, left/A then right/B: the files' own geometry, neutral
    captions as names, nothing of the source headers, one shared contrast range (the window both
    images were prepared through, so it says nothing about which is the original)."""
    volumes = [read_volume(path) for path in session.current.images]
    window = shared_window(volumes)  # the modality's reading window, the same for both panes
    layers = []
    for volume, caption in zip(volumes, session.labels, strict=True):
        data, attributes, kind = volume_to_layer_data(volume, caption, kind=PANE_KIND)
        attributes["metadata"][META_KEY]["source_metadata"] = {}
        attributes["contrast_limits"] = window
        layers.append((data, attributes, kind))
    return layers


def submitted_message(session: ReaderSession) -> str:
    """What a reader who has submitted is told, depending on the study's lock setting."""
    if session.locked:
        return "submitted: your answers are locked (read-only)"
    return "submitted: this study lets you revise answers; press Submit again when done"


class ReadingControls:
    """The active question and the shortcut actions on a session (errors become messages)."""

    def __init__(self, session: ReaderSession):
        self.session = session
        self.active = 0
        self.first_open_question()

    @property
    def question(self) -> Question:
        """The question the digit keys answer."""
        return self.session.questions[self.active]

    def first_open_question(self) -> None:
        """Make the first unanswered question of the item on screen active (the first if none)."""
        answers = self.session.answers
        ids = [q.id for q in self.session.questions]
        self.active = next((i for i, q in enumerate(ids) if q not in answers), 0)

    def run(self, action: str, argument: int = 0) -> str:
        """Do one shortcut action; returns a message for the reader ('' when all went well)."""
        try:
            return getattr(self, f"_{action}")(argument) or ""
        except SessionError as exc:
            return str(exc)

    def _choose(self, n: int) -> str:
        choices = options(self.question)
        if not 1 <= n <= len(choices):
            return f"'{self.question.id}' has no answer {n}"
        self.session.answer(self.question.id, choices[n - 1][1])
        self._question(1, wrap=False)
        return ""

    def _question(self, step: int, wrap: bool = True) -> str:
        count = len(self.session.questions)
        target = self.active + step
        self.active = target % count if wrap else min(max(target, 0), count - 1)
        return ""

    def _confirm(self, _: int = 0) -> str:
        self.session.confirm()
        self.first_open_question()
        return "all items confirmed: press Submit (Ctrl+Enter) to finish" if self.session.complete \
            else ""

    def _go(self, step: int) -> str:
        (self.session.next if step > 0 else self.session.previous)()
        self.first_open_question()
        return ""

    def _flag(self, _: int = 0) -> str:
        self.session.flag(not self.session.state.flagged)
        return ""

    def _submit(self, _: int = 0) -> str:
        self.session.submit()
        return submitted_message(self.session)
