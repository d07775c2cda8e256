"""Reader studies: blinded study folders, per-reader sessions with crash-safe logs, analysis,
export and multi-site merging."""

from medvae_engine.study.analyze import analyze_study
from medvae_engine.study.create import create_study, iter_create_study, spec_from_folders
from medvae_engine.study.export import export_answers
from medvae_engine.study.merge import merge_logs
from medvae_engine.study.session import ReaderSession, SessionError
from medvae_engine.study.spec import DEFAULT_QUESTIONS, Question, load_spec, load_study

__all__ = [
    "DEFAULT_QUESTIONS",
    "Question",
    "ReaderSession",
    "SessionError",
    "analyze_study",
    "create_study",
    "export_answers",
    "iter_create_study",
    "load_spec",
    "load_study",
    "merge_logs",
    "spec_from_folders",
]
