"""Reader study: one reader scores blinded image pairs on Likert scales, keyboard first.

The reader enters their id once; the widget opens that reader's `ReaderSession` in the prepared
study folder and shows the item's two images side by side in napari's grid (one camera, one slice),
with neutral captions only. Every answer, confirmation, flag and comment is appended and fsynced by
the session before the view moves on, so reopening resumes at the same item with the same answers.
Shortcuts live on the window holding the panel, so they work while the canvas or this panel has
focus.
"""

from __future__ import annotations

from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
)
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import QRadioButton

from medvae_engine.errors import MedVAEError
from medvae_engine.study import ReaderSession

from .._study_view import (
    HELP,
    SHORTCUTS,
    ReadingControls,
    anchor_text,
    format_seconds,
    options,
    pair_layer_data,
    submitted_message,
)
from ._captions import set_caption
from ._common import WIDGET_WIDTH, grid_of, medvae_panel, wrapped

ACTIVE_MARK = "\u25b6 "


class ReaderStudyWidget(Container):
    """Docked reading panel; all reading state lives in the `ReaderSession`."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.max_width = WIDGET_WIDTH
        self.viewer = napari_viewer
        medvae_panel(self, napari_viewer)
        self.session: ReaderSession | None = None
        self.controls: ReadingControls | None = None
        self.panes: list = []
        self._hidden: list = []
        self._shortcuts: list[QShortcut] = []
        self._unsubscribe = None
        self.folder = FileEdit(label="study folder", mode="d")
        self.reader = LineEdit(label="reader id")
        self.open_button = PushButton(text="Start reading")
        self.close_button = PushButton(text="Stop / switch reader", enabled=False)
        self.position = Label(label="", value="no session open")
        self.progress = ProgressBar(label="confirmed", min=0, max=1, value=0)
        self.elapsed = Label(label="time on item", value="")
        self.questions = Container(label="", labels=False)
        self.comment = LineEdit(label="comment", enabled=False)
        self.flagged = CheckBox(text="flag for review (F)", enabled=False)
        self.previous_button = PushButton(text="< Previous", enabled=False)
        self.confirm_button = PushButton(text="Confirm (Enter)", enabled=False)
        self.next_button = PushButton(text="Next >", enabled=False)
        self.submit_button = PushButton(text="Submit study", enabled=False)
        self.status = Label(label="", value="")
        self.help = Label(label="", value=HELP)
        navigation = Container(label="", layout="horizontal", labels=False,
                               widgets=[self.previous_button, self.confirm_button, self.next_button])
        self.extend([self.folder, self.reader, self.open_button, self.close_button, self.position,
                     self.progress, self.elapsed, self.questions, self.comment, self.flagged,
                     navigation, self.submit_button, self.status, self.help])
        for label in (self.status, self.help, self.position):
            wrapped(label)
        self.open_button.changed.connect(lambda: self.open_session())
        self.close_button.changed.connect(self.close_session)
        self.reader.native.returnPressed.connect(lambda: self.open_session())
        self.comment.native.editingFinished.connect(self._save_comment)
        self.flagged.changed.connect(self._on_flag_box)
        self.previous_button.changed.connect(lambda: self.act("go", -1))
        self.next_button.changed.connect(lambda: self.act("go", 1))
        self.confirm_button.changed.connect(lambda: self.act("confirm"))
        self.submit_button.changed.connect(lambda: self.act("submit"))
        self._timer = QTimer(self.native)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._show_elapsed)
        self.native.destroyed.connect(self._on_destroyed)

    # -- session lifetime -------------------------------------------------------------------------
    def open_session(self, folder=None, reader: str | None = None) -> bool:
        """Open (or resume) the reader's session in the study folder; False with a message if not."""
        folder = folder if folder is not None else self.folder.value
        reader = (reader if reader is not None else self.reader.value).strip()
        if self.session is not None:
            self.close_session()
        try:
            session = ReaderSession.open(folder, reader)
        except MedVAEError as exc:
            self.status.value = str(exc)
            show_error(str(exc))
            return False
        self.folder.value, self.reader.value = folder, reader
        self.session, self.controls = session, ReadingControls(session)
        self._build_questions()
        self._unsubscribe = session.subscribe(self._on_session_event)
        self._hidden = [layer for layer in self.viewer.layers if layer.visible]
        for layer in self._hidden:
            layer.visible = False
        self._add_shortcuts()
        self._show_pair()
        self.status.value = submitted_message(session) if session.submitted else ""
        self._refresh()
        if not session.locked:
            self._timer.start()
        return True

    def close_session(self) -> None:
        """Save the time on the item, then clear everything of this reader from view."""
        if self.session is None:
            return
        self._save_comment()
        self._timer.stop()
        self._unsubscribe()
        self.session.close()
        self._remove_shortcuts()
        for layer in self.panes:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.panes = []
        grid_of(self.viewer).enabled = False
        for layer in self._hidden:
            if layer in self.viewer.layers:
                layer.visible = True
        self._hidden = []
        self.session = self.controls = None
        self.questions.clear()
        with self.comment.changed.blocked(), self.flagged.changed.blocked():
            self.comment.value, self.flagged.value = "", False
        self.reader.value = ""
        self.status.value = "session closed"
        self._refresh()

    # -- reader actions ---------------------------------------------------------------------------
    def act(self, action: str, argument: int = 0) -> None:
        """Run a shortcut action on the open session and show what happened."""
        if self.controls is None:
            return
        if action in ("confirm", "go", "submit"):
            self._save_comment()
        self.status.value = self.controls.run(action, argument)
        if self.session.locked:
            self._timer.stop()
        self._refresh()

    def _answer(self, index: int, value) -> None:
        if self.controls is None or value is None:
            return
        self.controls.active = index
        question = self.session.questions[index]
        if self.session.answers.get(question.id) != value:
            self.status.value = ""
            try:
                self.session.answer(question.id, value)
            except MedVAEError as exc:
                self.status.value = str(exc)
        self._refresh()

    def _save_comment(self) -> None:
        if self.session is None or self.session.locked:
            return
        text = self.comment.value
        if text != self.session.state.comment:
            self.session.comment(text)

    def _on_flag_box(self, value: bool) -> None:
        if self.session is not None and bool(value) != self.session.state.flagged:
            self.act("flag")

    def _on_session_event(self, event: str, _session) -> None:
        if event == "navigate":
            self._show_pair()

    # -- view -------------------------------------------------------------------------------------
    def reset_choices(self, *_args) -> None:
        """No choice depends on layers; napari calls this on every layer change, and re-setting the
        answer buttons then would re-send the previous item's answers to the next item."""

    def _build_questions(self) -> None:
        self.questions.clear()
        self._question_labels, self._answer_widgets, self._anchors = [], [], []
        for index, question in enumerate(self.session.questions):
            label = wrapped(Label(value=question.text))
            if question.kind == "text":
                answer = LineEdit()
                answer.native.editingFinished.connect(
                    lambda i=index, w=answer: self._answer(i, w.value))
            else:
                answer = RadioButtons(choices=options(question), orientation="horizontal",
                                      nullable=True, value=None)
                answer.changed.connect(lambda value, i=index: self._answer(i, value))
                answer.tooltip = "\n".join(f"{v:+d}: {text}" if v else f"0: {text}"
                                           for v, text in sorted(question.anchors.items()))
            anchor = wrapped(Label(value=""))
            self.questions.extend([label, answer, anchor])
            for button in answer.native.findChildren(QRadioButton):  # hide "no answer yet"
                button.setVisible(button.text() != getattr(answer, "null_string", None))
            self._question_labels.append(label)
            self._answer_widgets.append(answer)
            self._anchors.append(anchor)

    def _show_pair(self) -> None:
        """Replace the panes with the item on screen: left/A and right/B in a linked 1x2 grid."""
        for layer in self.panes:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.panes = []
        for position, (data, attributes, _) in enumerate(pair_layer_data(self.session)):
            layer = self.viewer.add_image(data, **attributes)
            self.viewer.layers.move(self.viewer.layers.index(layer), position)
            # the neutral caption on the pane itself; 'Image A', not a bare 'A' beside the
            # orientation letter A (anterior)
            set_caption(layer, f"Image {layer.name}" if len(layer.name) == 1 else layer.name)
            self.panes.append(layer)
        grid = grid_of(self.viewer)
        grid.stride, grid.shape, grid.enabled = 1, (1, 2), True
        self.viewer.reset_view()
        QTimer.singleShot(0, self._fit_view)  # again once the grid's canvas size has settled

    def _fit_view(self) -> None:
        if self.panes:
            self.viewer.reset_view()

    def _refresh(self) -> None:
        session = self.session
        is_open = session is not None
        editable = is_open and not session.locked
        self.reader.enabled = not is_open
        self.open_button.enabled, self.close_button.enabled = not is_open, is_open
        for widget in (self.comment, self.flagged, self.confirm_button):
            widget.enabled = editable
        for widget in (self.previous_button, self.next_button):
            widget.enabled = is_open and session.study.navigation
        self.submit_button.enabled = editable and session.complete
        if not is_open:
            self.position.value, self.elapsed.value = "no session open", ""
            self.progress.max, self.progress.value = 1, 0
            return
        (n, total), (done, _) = session.position, session.progress
        state = session.state
        notes = [" (confirmed)" if state.confirmed else "", " (flagged)" if state.flagged else ""]
        self.position.value = f"Item {n} of {total}{''.join(notes)}"
        self.progress.max, self.progress.value = total, done
        self._show_elapsed()
        answers = session.answers
        for index, question in enumerate(session.questions):
            mark = ACTIVE_MARK if index == self.controls.active and editable else ""
            self._question_labels[index].value = mark + question.text
            widget = self._answer_widgets[index]
            with widget.changed.blocked():
                widget.value = answers.get(question.id, "" if question.kind == "text" else None)
            widget.enabled = editable
            self._anchors[index].value = anchor_text(question, answers.get(question.id))
        with self.comment.changed.blocked(), self.flagged.changed.blocked():
            self.comment.value, self.flagged.value = state.comment, state.flagged

    def _show_elapsed(self) -> None:
        if self.session is not None:
            self.elapsed.value = format_seconds(self.session.seconds_on())

    # -- keyboard ---------------------------------------------------------------------------------
    def _add_shortcuts(self) -> None:
        """Shortcuts on the window holding the panel (napari's main window when docked): active
        whichever of its widgets (canvas too) has focus, even with the panel tabbed behind another.
        The window comes from the panel's own Qt widget: plugin widgets get a public-only proxy of
        the viewer, whose private attributes are out of bounds."""
        window = self.native.window()
        for keys, (action, argument) in SHORTCUTS.items():
            shortcut = QShortcut(QKeySequence(keys), window)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(lambda a=action, n=argument: self.act(a, n))
            self._shortcuts.append(shortcut)

    def _remove_shortcuts(self) -> None:
        for shortcut in self._shortcuts:
            try:
                shortcut.setEnabled(False)
                shortcut.setParent(None)
                shortcut.deleteLater()
            except RuntimeError:  # already deleted with the main window
                pass
        self._shortcuts = []

    def _on_destroyed(self, *_args) -> None:
        """The panel or napari was closed: save the time on the item, free the keys."""
        if self.session is not None:
            self.session.close()
        self.session = self.controls = None
        self._remove_shortcuts()
