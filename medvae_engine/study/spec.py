"""Reader-study specifications: the coordinator's YAML spec (cases, methods, questions, display)
and the blinded study file readers open (items and questions only, never method names).

A coordinator's spec::

    name: pilot
    seed: 17
    display: side_by_side        # original left, candidate right; or blinded_ab (A/B, the
                                 # original on A for half of each method's items, on B for the rest)
    navigation: true             # readers may go back and forth; false: forward only
    lock_after_submit: true      # submitted answers become read-only; false: readers may revise
    questions: default           # the paper's three -2..2 questions (blinded_ab: B compared with A,
                                 # -2 A much better .. +2 B much better); or a list of
                                 # {id, text, kind: likert|choice|text, scale, anchors, choices}
    methods:                     # candidates generated for every case
      bicubic4: {codec: bicubic@4}  # any codec spec (medvae_engine.codec.spec)
      starter: {model: starter_4_1_2d}
    cases:
      - id: case01
        original: originals/case01.dcm
        candidates: {medvae: recon/medvae/case01.nii.gz}   # files, per case
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from medvae_engine.codec.spec import parse_codec
from medvae_engine.errors import InputError, ModelError

DISPLAYS = ("side_by_side", "blinded_ab")
QUESTION_KINDS = ("likert", "choice", "text")
STUDY_FILE = "study.yaml"
MANIFEST_FILE = "manifest.json"
ANSWERS_DIR = "answers"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class Question:
    """One question asked about every item: a Likert scale, a single choice or free text."""

    id: str
    text: str
    kind: str = "likert"
    scale: tuple[int, ...] = (-2, -1, 0, 1, 2)
    anchors: dict[int, str] = dataclasses.field(default_factory=dict)
    choices: tuple[str, ...] = ()
    required: bool = True

    def check_value(self, value: Any) -> Any:
        """The value normalised for this question, or ValueError saying why it does not fit."""
        if self.kind == "likert":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not float(value).is_integer()
                or int(value) not in self.scale
            ):
                raise ValueError(
                    f"question {self.id!r} takes one of {list(self.scale)}, got {value!r}"
                )
            return int(value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(
                    f"question {self.id!r} takes one of {list(self.choices)}, got {value!r}"
                )
            return value
        if not isinstance(value, str):
            raise ValueError(f"question {self.id!r} takes text, got {value!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML/JSON."""
        data: dict[str, Any] = {"id": self.id, "text": self.text, "kind": self.kind}
        if self.kind == "likert":
            data["scale"] = list(self.scale)
            data["anchors"] = {int(k): v for k, v in self.anchors.items()}
        if self.kind == "choice":
            data["choices"] = list(self.choices)
        data["required"] = self.required
        return data


DEFAULT_QUESTIONS = (
    Question(
        "fidelity",
        "Image fidelity: how faithfully does the reconstruction reproduce the original image?",
        anchors={
            -2: "Much worse: clearly degraded, structures blurred or distorted throughout",
            -1: "Slightly worse: noticeable loss of sharpness or texture in places",
            0: "Equivalent: no perceptible difference from the original",
            1: "Slightly better: marginally cleaner without losing any detail",
            2: "Much better: clearly cleaner and sharper than the original",
        },
    ),
    Question(
        "clinical_features",
        "Preservation of clinically relevant features: are findings and anatomy needed for "
        "diagnosis kept?",
        anchors={
            -2: "Lost: a clinically relevant feature is missing or would change the diagnosis",
            -1: "Partly lost: relevant features visible but less conspicuous or less certain",
            0: "Preserved: clinically relevant features as in the original",
            1: "Slightly clearer: relevant features marginally easier to assess",
            2: "Clearer: relevant features markedly easier to assess than in the original",
        },
    ),
    Question(
        "artifacts",
        "Artifacts: does the reconstruction introduce or remove artifacts (blocking, ringing, "
        "false structures)?",
        anchors={
            -2: "Severe new artifacts that impair interpretation or mimic structures",
            -1: "Mild new artifacts visible but not impairing interpretation",
            0: "No difference in artifacts compared with the original",
            1: "Mildly fewer artifacts than the original",
            2: "Markedly fewer artifacts than the original",
        },
    ),
)


def _ab_anchors(aspect: str) -> dict[int, str]:
    return {
        -2: f"A much better: {aspect} clearly better in A",
        -1: f"A slightly better: {aspect} somewhat better in A",
        0: f"Equivalent: no perceptible difference in {aspect}",
        1: f"B slightly better: {aspect} somewhat better in B",
        2: f"B much better: {aspect} clearly better in B",
    }


# blinded_ab: neither pane is known to be the original, so every question compares B with A
DEFAULT_AB_QUESTIONS = (
    Question("fidelity",
             "Image fidelity: how does image B compare with image A (sharpness, texture, "
             "structures free of blur or distortion)?",
             anchors=_ab_anchors("image fidelity")),
    Question("clinical_features",
             "Clinically relevant features: how does image B compare with image A in showing the "
             "findings and anatomy needed for diagnosis?",
             anchors=_ab_anchors("clinically relevant features")),
    Question("artifacts",
             "Artifacts: how does image B compare with image A (fewer blocking, ringing or false "
             "structures is better)?",
             anchors=_ab_anchors("freedom from artifacts")),
)

DISPLAY_LABELS = {"side_by_side": ("Original", "Reconstruction"), "blinded_ab": ("A", "B")}
DEFAULTS_BY_DISPLAY = {"side_by_side": DEFAULT_QUESTIONS, "blinded_ab": DEFAULT_AB_QUESTIONS}
KEY_SUFFIX = ".key.json"


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One original image and its candidates: method name -> file path or codec description."""

    id: str
    original: str
    candidates: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """The coordinator's study description: what to show, whom to ask what, how to blind."""

    name: str
    cases: tuple[CaseSpec, ...]
    questions: tuple[Question, ...] = DEFAULT_QUESTIONS
    display: str = "side_by_side"
    seed: int = 0
    navigation: bool = True
    lock_after_submit: bool = True
    base_dir: Path = Path(".")

    @property
    def methods(self) -> list[str]:
        """Method names in first-seen order."""
        names: dict[str, None] = {}
        for case in self.cases:
            names.update(dict.fromkeys(case.candidates))
        return list(names)

    def resolve(self, path: str) -> Path:
        """A spec path resolved against the spec file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML (paths as written in the spec)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "display": self.display,
            "navigation": self.navigation,
            "lock_after_submit": self.lock_after_submit,
            "questions": [q.to_dict() for q in self.questions],
            "cases": [
                {"id": c.id, "original": c.original, "candidates": dict(c.candidates)}
                for c in self.cases
            ],
        }


@dataclasses.dataclass(frozen=True)
class StudyItem:
    """One blinded item a reader scores: two neutral image files, left/A then right/B, and the
    intensity window both were prepared through (their shared display range)."""

    id: str
    images: tuple[Path, Path]
    window: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Study:
    """A prepared study folder as readers see it."""

    root: Path
    name: str
    seed: int
    display: str
    questions: tuple[Question, ...]
    items: tuple[StudyItem, ...]
    navigation: bool = True  # readers may move back and forth between items
    lock_after_submit: bool = True  # a submitted reader's answers are read-only

    @property
    def labels(self) -> tuple[str, str]:
        """Captions of the two image panes."""
        return DISPLAY_LABELS[self.display]

    def answers_path(self, reader_id: str) -> Path:
        """The append-only answer log of one reader."""
        return self.root / ANSWERS_DIR / f"{check_reader_id(reader_id)}.jsonl"

    def item(self, item_id: str) -> StudyItem:
        """The item with this id."""
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(item_id)


def check_reader_id(reader_id: str) -> str:
    """The reader id if it is safe as a file name, else InputError."""
    if not isinstance(reader_id, str) or not SAFE_ID.match(reader_id):
        raise InputError(
            f"reader id {reader_id!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit"
        )
    return reader_id


def _fail(source: str, message: str) -> InputError:
    return InputError(f"{source}: {message}")


def parse_question(data: Any, source: str) -> Question:
    """A Question from plain data, with clear errors naming the spec file and the question."""
    if not isinstance(data, dict):
        raise _fail(source, f"each question must be a mapping, got {data!r}")
    qid = data.get("id")
    if not isinstance(qid, str) or not SAFE_ID.match(qid):
        raise _fail(source, f"question id {qid!r} must be a short name of letters, digits, '_'")
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _fail(source, f"question {qid!r} needs a non-empty 'text'")
    kind = data.get("kind", "likert")
    if kind not in QUESTION_KINDS:
        raise _fail(source, f"question {qid!r}: kind must be one of {QUESTION_KINDS}, got {kind!r}")
    required = bool(data.get("required", True))
    if kind == "likert":
        scale = data.get("scale", [-2, -1, 0, 1, 2])
        if len(scale) == 2 and scale[1] - scale[0] > 1:
            scale = list(range(int(scale[0]), int(scale[1]) + 1))
        if (
            not isinstance(scale, list | tuple)
            or len(scale) < 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in scale)
            or list(scale) != sorted(set(scale))
        ):
            raise _fail(
                source, f"question {qid!r}: scale must be increasing integers, got {scale!r}"
            )
        anchors = {int(k): str(v) for k, v in (data.get("anchors") or {}).items()}
        if not set(anchors) <= set(scale):
            raise _fail(source, f"question {qid!r}: anchors {sorted(anchors)} outside {scale}")
        return Question(qid, text, kind, tuple(scale), anchors, (), required)
    if kind == "choice":
        choices = data.get("choices")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or len(set(map(str, choices))) != len(choices)
        ):
            raise _fail(source, f"question {qid!r}: choice needs 2 or more distinct 'choices'")
        return Question(qid, text, kind, (), {}, tuple(str(c) for c in choices), required)
    return Question(qid, text, kind, (), {}, (), bool(data.get("required", False)))


def parse_questions(data: Any, source: str, display: str = "side_by_side") -> tuple[Question, ...]:
    """Questions from plain data; None or "default" gives the paper's three Likert questions
    (worded "B compared with A" for blinded_ab, whose Likert scales must be symmetric about 0)."""
    defaults = DEFAULTS_BY_DISPLAY[display]
    if data is None or data == "default":
        return defaults
    if not isinstance(data, list) or not data:
        raise _fail(source, "'questions' must be 'default' or a non-empty list")
    questions = []
    for entry in data:
        if entry == "default":
            questions.extend(defaults)
        else:
            questions.append(parse_question(entry, source))
    ids = [q.id for q in questions]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise _fail(source, f"duplicate question ids {duplicates}")
    if display == "blinded_ab":
        for q in questions:
            if q.kind == "likert" and list(q.scale) != [-v for v in reversed(q.scale)]:
                raise _fail(source, f"question {q.id!r}: blinded_ab questions compare B with A, so "
                                    f"the scale must be symmetric about 0 (-: A better, +: B "
                                    f"better), got {list(q.scale)}")
    return tuple(questions)


def parse_candidate(value: Any, where: str, source: str) -> Any:
    """A candidate source: a file path, {codec: SPEC} or {model: NAME[, weights: P]}; the older
    {codec: MODE, factor: F} is read as {codec: MODE@F}."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict):
        if "model" in value and isinstance(value["model"], str):
            unknown = set(value) - {"model", "weights"}
            if not unknown:
                return dict(value)
        if "codec" in value and isinstance(value["codec"], str):
            factor = value.get("factor")
            unknown = set(value) - {"codec", "factor", "spatial_dims"}
            if not unknown and (factor is None or (isinstance(factor, int)
                                                   and not isinstance(factor, bool))):
                text = value["codec"] if factor is None else f"{value['codec']}@{factor}"
                try:
                    spec = parse_codec(text)
                except ModelError as e:
                    raise _fail(source, f"{where}: {e}") from None
                return {k: v for k, v in value.items() if k != "factor"} | {"codec": str(spec)}
    raise _fail(
        source,
        f"{where}: a candidate is a file path, {{codec: SPEC}} (e.g. bicubic@4) or "
        f"{{model: NAME}}, got {value!r}",
    )


def parse_spec(data: Any, source: str = "<spec>", base_dir: Path | None = None) -> StudySpec:
    """A validated StudySpec from plain data (the parsed YAML)."""
    if not isinstance(data, dict):
        raise _fail(source, "the spec must be a mapping with 'cases'")
    unknown = set(data) - {"name", "seed", "display", "navigation", "lock_after_submit",
                           "questions", "cases", "methods"}
    if unknown:
        raise _fail(source, f"unknown keys {sorted(unknown)}")
    display = data.get("display", "side_by_side")
    if display not in DISPLAYS:
        raise _fail(source, f"display must be one of {DISPLAYS}, got {display!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(source, f"seed must be an integer, got {seed!r}")
    shared = data.get("methods") or {}
    if not isinstance(shared, dict):
        raise _fail(source, "'methods' must map method names to a codec or model for every case")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise _fail(source, "'cases' must be a non-empty list")
    cases = []
    for n, raw in enumerate(raw_cases):
        if not isinstance(raw, dict) or not isinstance(raw.get("original"), str):
            raise _fail(source, f"case {n + 1} needs an 'original' file path")
        cid = str(raw.get("id", f"case_{n + 1:03d}"))
        candidates = {**shared, **(raw.get("candidates") or {})}
        if not candidates:
            raise _fail(source, f"case {cid!r} has no candidates (give 'candidates' or 'methods')")
        for name in candidates:
            if not isinstance(name, str) or not SAFE_ID.match(name):
                raise _fail(source, f"case {cid!r}: method name {name!r} must be a short name")
        parsed = {
            m: parse_candidate(v, f"case {cid!r} method {m!r}", source)
            for m, v in candidates.items()
        }
        cases.append(CaseSpec(cid, raw["original"], parsed))
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise _fail(source, f"duplicate case ids {duplicates}")
    return StudySpec(
        name=str(data.get("name", "reader-study")),
        cases=tuple(cases),
        questions=parse_questions(data.get("questions"), source, display),
        display=display,
        seed=seed,
        navigation=_flag(data, "navigation", source),
        lock_after_submit=_flag(data, "lock_after_submit", source),
        base_dir=base_dir or Path("."),
    )


def _flag(data: dict, key: str, source: str) -> bool:
    """A yes/no setting (default yes); anything but a YAML boolean is an error."""
    value = data.get(key, True)
    if not isinstance(value, bool):
        raise _fail(source, f"{key} must be true or false, got {value!r}")
    return value


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read YAML ({str(exc).splitlines()[0]})") from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a coordinator's study spec; relative paths resolve from its folder."""
    path = Path(path)
    return parse_spec(_read_yaml(path), str(path), path.parent)


def load_study(root: str | Path) -> Study:
    """Open a prepared study folder (its blinded study.yaml) as readers see it."""
    root = Path(root)
    source = root / STUDY_FILE
    data = _read_yaml(source)
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise _fail(str(source), "not a prepared study (no 'items'); run 'medvae study create'")
    display = data.get("display")
    if display not in DISPLAYS:
        raise _fail(str(source), f"display must be one of {DISPLAYS}, got {display!r}")
    items = []
    for raw in data["items"]:
        images = raw.get("images") if isinstance(raw, dict) else None
        if not isinstance(images, list) or len(images) != 2:
            raise _fail(str(source), f"item {raw!r} needs two 'images'")
        window = raw.get("window")
        if window is not None and (not isinstance(window, list) or len(window) != 2
                                   or not all(isinstance(v, int | float) for v in window)):
            raise _fail(str(source), f"item {raw.get('id')!r}: window must be [low, high]")
        items.append(StudyItem(str(raw["id"]), (root / images[0], root / images[1]),
                               tuple(float(v) for v in window) if window else None))
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids) or not ids:
        raise _fail(str(source), "item ids must be unique and at least one item is needed")
    return Study(
        root=root,
        name=str(data.get("name", "reader-study")),
        seed=int(data.get("seed", 0)),
        display=display,
        questions=parse_questions(data.get("questions"), str(source), display),
        items=tuple(items),
        navigation=_flag(data, "navigation", str(source)),
        lock_after_submit=_flag(data, "lock_after_submit", str(source)),
    )


def manifest_checksum(root: str | Path) -> str | None:
    """sha256 of a study folder's manifest.json: identifies the study a reader's log belongs to."""
    try:
        return hashlib.sha256((Path(root) / MANIFEST_FILE).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _looks_like_key(path: Path) -> bool:
    if path.name == "key.json" or path.name.endswith(KEY_SUFFIX):
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    items = data.get("items") if isinstance(data, dict) else None
    return isinstance(items, dict) and any(
        isinstance(v, dict) and "method" in v for v in items.values()
    )


def keys_inside(root: str | Path) -> list[Path]:
    """Answer keys (files that map items to methods) inside a study folder; none belong there."""
    root = Path(root)
    return sorted(p for p in root.rglob("*.json") if p.is_file() and _looks_like_key(p))


def check_no_key(root: str | Path) -> None:
    """InputError naming the key when a study folder handed to readers holds its answer key."""
    found = keys_inside(root)
    if found:
        raise InputError(f"{found[0]}: this study folder holds the answer key (which method made "
                         "which image); readers must not get it: move the key out of the folder")
