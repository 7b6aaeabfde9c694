"""Export a feedback database to the files the trainers and ``preftune eval`` read (rows from
:func:`preftune.data.feedback_db.export_rows`: preference with margin, ranking, correction, ratings, rule, and the
human-judgement file of ``--judges human:FILE``)."""

from __future__ import annotations

import json
from pathlib import Path

from preftune.data.feedback_db import ExportRows, export_rows


def write_export(db: str | Path, task: str, out: str | Path, *, keep_ties: bool = True) -> ExportRows:
    """Write the ``task`` export of ``db`` as JSON lines to ``out``; returns the rows and what was left out."""
    result = export_rows(db, task, keep_ties=keep_ties)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in result.rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return result
