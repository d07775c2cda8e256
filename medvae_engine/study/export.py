"""One CSV of every reader's latest answers joined with the key, for coordinators' own analyses.

One row per reader and item: the item, its case and method, the side the original was shown on,
each question's answer as given (B compared with A), each Likert answer as the candidate relative
to the original (``<question>_vs_original``), confirmation, time on the item, flag and comment.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from medvae_engine.errors import OutputError
from medvae_engine.imaging.atomic import atomic_write_text
from medvae_engine.study.analyze import candidate_score, study_and_key
from medvae_engine.study.persistence import read_log
from medvae_engine.study.session import replay_log
from medvae_engine.study.spec import ANSWERS_DIR


def export_answers(
    study_dir: str | Path, output: str | Path, key_path: str | Path | None = None
) -> int:
    """Write the answers CSV to ``output`` (never inside the study folder); returns its row count."""
    study, key, _ = study_and_key(study_dir, key_path)
    output = Path(output)
    if output.resolve().is_relative_to(study.root.resolve()):
        raise OutputError(f"{output}: the export names the methods; write it outside the study "
                          f"folder {study.root} that readers get")
    item_ids = sorted(item.id for item in study.items)
    likert = [q for q in study.questions if q.kind == "likert"]
    fields = ["reader", "item", "case", "method", "original_side",
              *(q.id for q in study.questions), *(f"{q.id}_vs_original" for q in likert),
              "confirmed", "seconds_on_item", "flagged", "comment", "submitted"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    rows = 0
    for log_path in sorted((study.root / ANSWERS_DIR).glob("*.jsonl")):
        _, states, submitted = replay_log(read_log(log_path)[0], item_ids)
        for item_id in item_ids:
            state, truth = states[item_id], key["items"][item_id]
            side = truth.get("original_side", "a")
            row = {"reader": log_path.stem, "item": item_id, "case": truth.get("case"),
                   "method": truth.get("method"), "original_side": side,
                   "confirmed": state.confirmed, "seconds_on_item": round(state.seconds, 3),
                   "flagged": state.flagged, "comment": state.comment, "submitted": submitted}
            row.update({q.id: state.answers.get(q.id, "") for q in study.questions})
            row.update({f"{q.id}_vs_original": candidate_score(q, state.answers[q.id], side)
                        for q in likert if q.id in state.answers})
            writer.writerow(row)
            rows += 1
    atomic_write_text(output, buffer.getvalue())
    return rows
