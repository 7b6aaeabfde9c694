"""The human-feedback database (SQLite) at the data layer: its schema, and its submissions as rows of the formats
:mod:`preftune.data.convert` reads.

``preftune annotate`` (:mod:`preftune.feedback.store`) writes the database; this module only defines the tables and
reads them, so that ``preftune reward --data feedback.sqlite`` and ``preftune dpo --data feedback.sqlite`` read a
database through :func:`preftune.data.readers.read_rows` without the data layer importing the web app.

Tables: ``annotators`` (name, SHA-256 of the private token, admin flag), ``items`` (task, prompt, responses, rules),
``assignments`` (item × annotator, unique, with the left-to-right order the responses are shown in) and
``submissions`` (one per answer; ``submission_id`` is made by the client and unique, so a retried POST never adds a
row; ``undone`` marks a submission taken back; at most one live submission per assignment).

A submission's ``answer`` is stored in terms of the item's own response indices (not screen positions):

=============  ===================================================================================================
``pairwise``    ``{"winner": 0 | 1 | "tie", "strength": null | "slightly" | "clearly" | "much", "left": 0 | 1}``
``ranking``     ``{"order": [i, ...]}`` best to worst
``correction``  ``{"better": 0 | 1, "corrected": text}``
``rating``      ``{"rating": 1..7}``
``rules``       ``{"answers": {rule: "yes" | "no" | "unsure"}}`` ("yes": the response breaks the rule)
=============  ===================================================================================================

A skipped item has ``skipped = 1`` and an empty answer.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from preftune.data.formats import Ranking, correction_pairs
from preftune.errors import DataError

TASKS = ("pairwise", "ranking", "correction", "rating", "rules")
EXPORTS = TASKS + ("judgements",)
DB_SUFFIXES = (".sqlite", ".sqlite3", ".db")

#: Strength of a pairwise preference → the margin of the preference format. The values are the "small" margins of
#: Llama 2's reward model (Touvron et al. 2023, §3.2.2 and Table 28: 1, 2/3, 1/3 for significantly / better /
#: slightly better), here named much / clearly / slightly better.
STRENGTH_MARGIN = {"slightly": 1 / 3, "clearly": 2 / 3, "much": 1.0}

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    responses TEXT NOT NULL,
    rules TEXT NOT NULL DEFAULT '[]',
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    shown_order TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (item_id, annotator_id)
);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY,
    submission_id TEXT NOT NULL UNIQUE,
    assignment_id INTEGER NOT NULL REFERENCES assignments(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    item_id INTEGER NOT NULL REFERENCES items(id),
    task TEXT NOT NULL,
    answer TEXT NOT NULL,
    skipped INTEGER NOT NULL DEFAULT 0,
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_submission ON submissions(assignment_id) WHERE undone = 0;
CREATE INDEX IF NOT EXISTS submissions_by_annotator ON submissions(annotator_id, id);
CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments(annotator_id, id);
"""


def is_feedback_db(path: str | Path) -> bool:
    return str(path).lower().endswith(DB_SUFFIXES)


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the database (read-only: the file must exist and is never created or changed)."""
    p = Path(path)
    if readonly:
        if not p.is_file():
            raise DataError("no such feedback database", file=str(path))
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
    else:
        conn = sqlite3.connect(str(p), timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


@dataclass
class Submission:
    """One live submission with its item: what the exports and statistics read."""

    id: int
    annotator: str
    item_id: int
    task: str
    prompt: object
    responses: list[str]
    rules: list[str]
    answer: dict
    skipped: bool
    comment: str


def read_submissions(path: str | Path, task: str | None = None) -> list[Submission]:
    """Every live (not undone) submission, oldest first, optionally of one task."""
    conn = connect(path, readonly=True)
    try:
        try:
            sql = ("SELECT s.id, a.name, s.item_id, s.task, i.prompt, i.responses, i.rules, s.answer, s.skipped, s.comment "
                   "FROM submissions s JOIN items i ON i.id = s.item_id JOIN annotators a ON a.id = s.annotator_id "
                   "WHERE s.undone = 0" + (" AND s.task = ?" if task else "") + " ORDER BY s.id")
            rows = conn.execute(sql, (task,) if task else ()).fetchall()
        except sqlite3.DatabaseError as err:
            raise DataError(f"is not a preftune feedback database ({err})", file=str(path)) from None
    finally:
        conn.close()
    return [Submission(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), json.loads(r[6]), json.loads(r[7]),
                       bool(r[8]), r[9]) for r in rows]


@dataclass
class ExportRows:
    """Rows of one export, and what was left out with why (``Counter`` of reasons)."""

    rows: list[dict]
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        parts = ", ".join(f"{n} × {reason}" for reason, n in sorted(self.dropped.items()))
        return f"{len(self.rows)} rows" + (f"; left out {parts}" if parts else "")


def export_rows(path: str | Path, task: str, *, keep_ties: bool = True) -> ExportRows:
    """The live submissions of ``task`` as rows of the project's formats.

    * ``pairwise`` → preference rows ``{"prompt", "chosen", "rejected"}`` (+ ``"margin"`` from the strength); ties are
      not pairs and are left out (counted);
    * ``ranking`` → ``{"prompt", "responses"}`` best to worst; ``correction`` → ``{"prompt", "chosen", "rejected",
      "corrected"}``; ``rating`` → flat ``{"prompt", "response", "rating"}``; ``rules`` → one ``{"prompt", "response",
      "rule", "followed"}`` per rule answered yes / no ("unsure" is left out, counted);
    * ``judgements`` → what ``preftune eval --judges human:FILE`` reads: ``{"prompt", "response_a", "response_b",
      "preference"}`` with ``"a"``, ``"b"`` or ``"tie"`` (ties left out when ``keep_ties`` is false).

    Skipped items are always left out (counted).
    """
    if task not in EXPORTS:
        raise DataError(f"unknown feedback task '{task}' (choose from {', '.join(EXPORTS)})", file=str(path))
    source_task = "pairwise" if task == "judgements" else task
    out = ExportRows([])
    for s in read_submissions(path, source_task):
        if s.skipped:
            out.dropped["skipped"] += 1
            continue
        a, r = s.answer, s.responses
        if task == "pairwise":
            if a["winner"] == "tie":
                out.dropped["tie (not a preference pair)"] += 1
                continue
            row = {"prompt": s.prompt, "chosen": r[a["winner"]], "rejected": r[1 - a["winner"]]}
            if a.get("strength"):
                row["margin"] = STRENGTH_MARGIN[a["strength"]]
            out.rows.append(row)
        elif task == "judgements":
            if a["winner"] == "tie" and not keep_ties:
                out.dropped["tie"] += 1
                continue
            pref = "tie" if a["winner"] == "tie" else ("a" if a["winner"] == 0 else "b")
            out.rows.append({"prompt": s.prompt, "response_a": r[0], "response_b": r[1], "preference": pref,
                             "annotator": s.annotator})
        elif task == "ranking":
            out.rows.append({"prompt": s.prompt, "responses": [r[i] for i in a["order"]]})
        elif task == "correction":
            out.rows.append({"prompt": s.prompt, "chosen": r[a["better"]], "rejected": r[1 - a["better"]],
                             "corrected": a["corrected"]})
        elif task == "rating":
            out.rows.append({"prompt": s.prompt, "response": r[0], "rating": a["rating"]})
        else:  # rules
            for rule in s.rules:
                verdict = a["answers"][rule]
                if verdict == "unsure":
                    out.dropped["unsure rule verdict"] += 1
                    continue
                out.rows.append({"prompt": s.prompt, "response": r[0], "rule": rule, "followed": verdict == "no"})
    return out


def read_feedback_db(path: str | Path) -> Iterator[tuple[int, dict]]:
    """A feedback database as preference rows ``{"prompt", "chosen", "rejected"(, "margin")}``, what the reward and
    DPO trainers read: pairwise choices (ties and skips left out), every pair of each ranking, and the three pairs of
    each correction (corrected ≻ chosen, corrected ≻ rejected, chosen ≻ rejected). Rows are numbered from 1."""
    rows = list(export_rows(path, "pairwise").rows)
    for row in export_rows(path, "ranking").rows:
        rows += [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                 for p in Ranking(row["prompt"], tuple(row["responses"])).to_pairs()]
    for row in export_rows(path, "correction").rows:
        rows += [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                 for p in correction_pairs(row["prompt"], row["chosen"], row["rejected"], row["corrected"])]
    yield from enumerate(rows, start=1)
