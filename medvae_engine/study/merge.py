"""Merge readers' answer logs recorded at different sites into one study folder.

A source is a copy of the study folder (its ``answers/*.jsonl``), a folder of logs or one log file.
Every log must come from this study: its start record carries the sha256 of the study's
manifest.json (and a source study folder's own manifest must match). Logs are only ever appended
to: a reader's log that continues the one already in the study adds its new records, an identical
or older one adds nothing, and a log that disagrees with the study's copy is refused. All sources
are checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from medvae_engine.errors import InputError
from medvae_engine.study.persistence import AnswerLog, TornLogWarning, read_log
from medvae_engine.study.spec import (
    ANSWERS_DIR,
    MANIFEST_FILE,
    check_reader_id,
    load_study,
    manifest_checksum,
)


@dataclasses.dataclass(frozen=True)
class MergeStep:
    """What merging one source log does to the reader's log in the study."""

    reader: str
    source: Path
    new_records: list[dict[str, Any]]


def _source_logs(source: Path, checksum: str) -> tuple[list[Path], bool]:
    """(logs of a source, whether the source is a study folder whose manifest matches)."""
    if source.is_file():
        if not source.name.endswith(".jsonl"):
            raise InputError(f"{source}: not a reader log (expected answers/<reader>.jsonl)")
        return [source], False
    if not source.is_dir():
        raise InputError(f"{source}: no such file or folder")
    if (source / MANIFEST_FILE).exists():
        if manifest_checksum(source) != checksum:
            raise InputError(f"{source / MANIFEST_FILE}: a different study (manifest checksum "
                             "differs from the target study's)")
        return sorted((source / ANSWERS_DIR).glob("*.jsonl")), True
    logs = sorted(source.glob("*.jsonl"))
    if not logs:
        raise InputError(f"{source}: no reader logs (*.jsonl) in this folder")
    return logs, False


def _check_log(path: Path, records: list[dict], checksum: str, from_study: bool,
               item_ids: set[str]) -> None:
    start = next((r for r in records if r.get("type") == "start"), None)
    if start is None:
        raise InputError(f"{path}: not a reader log (no start record)")
    logged = start.get("manifest_sha256")
    if logged is None and not from_study:
        raise InputError(f"{path}: the log does not say which study it belongs to (no manifest "
                         "checksum); merge the site's whole study folder instead")
    if logged is not None and logged != checksum:
        raise InputError(f"{path}: recorded for another study (manifest checksum {logged[:12]}... "
                         f"differs from {checksum[:12]}...)")
    if set(start.get("order", [])) != item_ids:
        raise InputError(f"{path}: the log's items differ from the study's")


def plan_merge(study_dir: str | Path, sources: list[str | Path]) -> list[MergeStep]:
    """Check every source log against the study and work out the records each would append."""
    study = load_study(study_dir)
    checksum = manifest_checksum(study.root)
    if checksum is None:
        raise InputError(f"{study.root / MANIFEST_FILE}: missing; not a study folder")
    item_ids = {item.id for item in study.items}
    current: dict[str, list[dict]] = {}
    steps = []
    for source in map(Path, sources):
        logs, from_study = _source_logs(source, checksum)
        for path in logs:
            reader = check_reader_id(path.stem)
            with warnings.catch_warnings():  # a torn last line is skipped; complete records merge
                warnings.simplefilter("ignore", TornLogWarning)
                records = read_log(path)[0]
            _check_log(path, records, checksum, from_study, item_ids)
            if reader not in current:
                current[reader] = read_log(study.answers_path(reader))[0]
            have = current[reader]
            if records[: len(have)] == have:
                new = records[len(have):]
            elif have[: len(records)] == records:
                new = []
            else:
                raise InputError(
                    f"{path}: reader {reader!r} has a different log in {study.answers_path(reader)}"
                    " (read at two sites under one id?); merge nothing until one is renamed")
            current[reader] = have + new
            steps.append(MergeStep(reader, path, new))
    return steps


def merge_logs(study_dir: str | Path, sources: list[str | Path]) -> list[MergeStep]:
    """Append every source log's new records to the study's reader logs (checked first, see
    ``plan_merge``); returns what was done per source log."""
    steps = plan_merge(study_dir, sources)
    study = load_study(study_dir)
    for step in steps:
        if step.new_records:
            log = AnswerLog(study.answers_path(step.reader))
            for record in step.new_records:
                log.append(record)
    return steps
