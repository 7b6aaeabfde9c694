"""The feedback store: items, annotators, assignments and submissions in one SQLite file.

* WAL journal, ``synchronous=FULL``: a submission acknowledged to the client has been committed and synced, and
  readers never block the writer. Every write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken at
  the start, so two requests never interleave a check and an insert).
* A submission carries a client-made ``submission_id`` (UNIQUE in the table): the same id sent again returns the first
  answer's acknowledgement instead of a second row, so a client may retry a POST whose reply it never saw.
* Tokens are random (:func:`secrets.token_urlsafe`, 192 bits); only their SHA-256 is stored, and the stored digest is
  compared with :func:`hmac.compare_digest`.
* Items are assigned lazily: an annotator asking for work gets their oldest unanswered assignment, else a new item
  that fewer than ``overlap`` annotators have (preferring items others already started, so overlaps complete and
  agreement can be measured) and that they never had — ``UNIQUE(item_id, annotator_id)`` makes "never the same item
  twice" a constraint, not a hope. The left-to-right order of the responses is drawn at assignment and recorded.
* SQL is parameterised only (``?`` placeholders); no text from a request is ever part of a statement.

The schema and the read side are :mod:`preftune.data.feedback_db` (the data layer reads the database too).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from preftune.data.feedback_db import SCHEMA, STRENGTH_MARGIN, TASKS, connect
from preftune.data.formats import Prompt
from preftune.errors import PreftuneError

RATING_RANGE = (1, 7)
MAX_COMMENT = 5_000
MAX_CORRECTION = 20_000
RULE_VERDICTS = ("yes", "no", "unsure")


class FeedbackError(PreftuneError):
    """A request the store refuses; ``status`` is the HTTP status the app answers with."""

    status = 422


class NotFound(FeedbackError):
    status = 404


class Conflict(FeedbackError):
    status = 409


class Unauthorized(FeedbackError):
    status = 401


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


@dataclass
class Assignment:
    """An item as one annotator sees it: ``shown`` lists the item's response indices left to right."""

    id: int
    item_id: int
    task: str
    prompt: Prompt
    responses: list[str]
    rules: list[str]
    shown: list[int]

    @property
    def shown_responses(self) -> list[str]:
        return [self.responses[i] for i in self.shown]


@dataclass(frozen=True)
class Receipt:
    """The acknowledgement of a submission: its row id, and whether this id had been submitted before."""

    id: int
    submission_id: str
    duplicate: bool


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(24)


def item_key(task: str, prompt: Prompt, responses: Sequence[str], rules: Sequence[str]) -> str:
    """One item per (task, prompt, responses, rules): adding the same items again (a restarted server) adds nothing."""
    return hashlib.sha256(json.dumps([task, prompt, list(responses), list(rules)], ensure_ascii=False).encode()).hexdigest()


class FeedbackStore:
    """One feedback database. Safe to share between threads (each thread has its own connection)."""

    def __init__(self, path: str | Path, *, overlap: int = 1, seed: int | None = None):
        if overlap < 1:
            raise PreftuneError(f"overlap must be at least 1, got {overlap}")
        self.path = str(path)
        self.overlap = overlap
        self._local = threading.local()
        self._rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self._rng_lock = threading.Lock()
        conn = self._conn()
        try:
            conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise PreftuneError(f"{self.path} is not a SQLite database ({err})") from None

    # -- connections and transactions --------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def _write(self):
        return _Transaction(self._conn())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- annotators ------------------------------------------------------------------------------------------

    def add_annotator(self, name: str, *, admin: bool = False) -> str:
        """Create an annotator (or the admin) and return their private token (shown once: only its digest is kept)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise PreftuneError("an annotator's name must be 1 to 100 characters")
        token = new_token()
        with self._write() as conn:
            try:
                conn.execute("INSERT INTO annotators (name, token_sha256, is_admin, created) VALUES (?, ?, ?, ?)",
                             (name, _digest(token), int(admin), time.time()))
            except sqlite3.IntegrityError:
                raise PreftuneError(f"there is already an annotator named '{name}' in {self.path}") from None
        return token

    def has_admin(self) -> bool:
        return self._conn().execute("SELECT 1 FROM annotators WHERE is_admin = 1").fetchone() is not None

    def annotators(self) -> list[Annotator]:
        rows = self._conn().execute("SELECT id, name, is_admin FROM annotators ORDER BY id").fetchall()
        return [Annotator(r[0], r[1], bool(r[2])) for r in rows]

    def authenticate(self, token: str | None) -> Annotator:
        """The annotator holding ``token``; :class:`Unauthorized` for a missing or unknown one."""
        if not token or len(token) > 200:
            raise Unauthorized("a valid token is required (Authorization: Bearer TOKEN)")
        digest = _digest(token)
        row = self._conn().execute("SELECT id, name, is_admin, token_sha256 FROM annotators WHERE token_sha256 = ?",
                                   (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[3], digest):
            raise Unauthorized("a valid token is required (Authorization: Bearer TOKEN)")
        return Annotator(row[0], row[1], bool(row[2]))

    # -- items ------------------------------------------------------------------------------------------------

    def add_items(self, task: str, items: Sequence[tuple[Prompt, Sequence[str]]], *, rules: Sequence[str] = (),
                  meta: Sequence[dict] | None = None) -> int:
        """Add items of ``task`` (each a prompt with its responses); items already present are kept. Returns how many
        were new."""
        if task not in TASKS:
            raise PreftuneError(f"unknown feedback task '{task}' (choose from {', '.join(TASKS)})")
        need = {"pairwise": (2, 2), "correction": (2, 2), "ranking": (2, 50), "rating": (1, 1), "rules": (1, 1)}[task]
        if task == "rules" and not rules:
            raise PreftuneError("the rules task needs a list of rules")
        added = 0
        with self._write() as conn:
            for n, (prompt, responses) in enumerate(items):
                responses = [str(r) for r in responses]
                if not need[0] <= len(responses) <= need[1]:
                    raise PreftuneError(f"a {task} item needs {need[0]}" + (f" to {need[1]}" if need[1] != need[0] else "")
                                        + f" responses; item {n} has {len(responses)}")
                cur = conn.execute(
                    "INSERT OR IGNORE INTO items (task, key, prompt, responses, rules, meta, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (task, item_key(task, prompt, responses, rules), json.dumps(prompt, ensure_ascii=False),
                     json.dumps(responses, ensure_ascii=False), json.dumps(list(rules), ensure_ascii=False),
                     json.dumps(meta[n] if meta else {}, ensure_ascii=False), time.time()))
                added += cur.rowcount
        return added

    def count_items(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._conn().execute("SELECT task, COUNT(*) FROM items GROUP BY task ORDER BY task")}

    # -- an annotator's queue ---------------------------------------------------------------------------------

    def _assignment(self, conn, annotator: Annotator, assignment_id: int, *, admin_reads_all: bool = False) -> Assignment:
        anyone = admin_reads_all and annotator.is_admin
        row = conn.execute(
            "SELECT a.id, a.item_id, i.task, i.prompt, i.responses, i.rules, a.shown_order FROM assignments a "
            "JOIN items i ON i.id = a.item_id WHERE a.id = ? AND (a.annotator_id = ? OR ?)",
            (assignment_id, annotator.id, int(anyone))).fetchone()
        if row is None:  # someone else's assignment looks exactly like one that does not exist
            raise NotFound(f"no assignment {assignment_id} in your queue")
        return Assignment(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), json.loads(row[5]), json.loads(row[6]))

    def get_assignment(self, annotator: Annotator, assignment_id: int) -> Assignment:
        """One of the annotator's assignments (the admin may read anyone's; nobody writes another's)."""
        return self._assignment(self._conn(), annotator, assignment_id, admin_reads_all=True)

    def next_assignment(self, annotator: Annotator) -> Assignment | None:
        """The annotator's oldest unanswered assignment, else a newly assigned item; None when there is no more work."""
        pending_sql = ("SELECT a.id FROM assignments a WHERE a.annotator_id = ? AND NOT EXISTS "
                       "(SELECT 1 FROM submissions s WHERE s.assignment_id = a.id AND s.undone = 0) ORDER BY a.id LIMIT 1")
        conn = self._conn()
        row = conn.execute(pending_sql, (annotator.id,)).fetchone()
        if row is not None:
            return self._assignment(conn, annotator, row[0])
        with self._write() as conn:
            row = conn.execute(pending_sql, (annotator.id,)).fetchone()  # again, under the write lock
            if row is None:
                item = conn.execute(
                    "SELECT i.id, i.responses, (SELECT COUNT(*) FROM assignments x WHERE x.item_id = i.id) AS n FROM items i "
                    "WHERE n < ? AND NOT EXISTS (SELECT 1 FROM assignments y WHERE y.item_id = i.id AND y.annotator_id = ?) "
                    "ORDER BY n DESC, i.id LIMIT 1", (self.overlap, annotator.id)).fetchone()
                if item is None:
                    return None
                shown = list(range(len(json.loads(item[1]))))
                with self._rng_lock:
                    self._rng.shuffle(shown)
                cur = conn.execute("INSERT INTO assignments (item_id, annotator_id, shown_order, created) VALUES (?, ?, ?, ?)",
                                   (item[0], annotator.id, json.dumps(shown), time.time()))
                row = (cur.lastrowid,)
            return self._assignment(conn, annotator, row[0])

    def progress(self, annotator: Annotator) -> Progress:
        conn = self._conn()
        done = conn.execute("SELECT COUNT(*) FROM submissions WHERE annotator_id = ? AND undone = 0", (annotator.id,)).fetchone()[0]
        pending = conn.execute(
            "SELECT COUNT(*) FROM assignments a WHERE a.annotator_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM submissions s WHERE s.assignment_id = a.id AND s.undone = 0)", (annotator.id,)).fetchone()[0]
        open_items = conn.execute(
            "SELECT COUNT(*) FROM items i WHERE (SELECT COUNT(*) FROM assignments x WHERE x.item_id = i.id) < ? AND NOT EXISTS "
            "(SELECT 1 FROM assignments y WHERE y.item_id = i.id AND y.annotator_id = ?)", (self.overlap, annotator.id)).fetchone()[0]
        return Progress(done, done + pending + open_items)

    # -- submissions ------------------------------------------------------------------------------------------

    def submit(self, annotator: Annotator, submission_id: str, assignment_id: int, answer: dict, comment: str = "") -> Receipt:
        """Record an answer (in screen terms, see :func:`canonical_answer`) to one of the annotator's assignments.

        The same ``submission_id`` again returns the first receipt (``duplicate=True``) and writes nothing.
        """
        if not isinstance(submission_id, str) or not 8 <= len(submission_id) <= 100:
            raise FeedbackError("submission_id must be text of 8 to 100 characters, made by the client")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise FeedbackError(f"comment must be text of at most {MAX_COMMENT} characters")
        with self._write() as conn:
            seen = conn.execute("SELECT id, annotator_id, assignment_id FROM submissions WHERE submission_id = ?",
                                (submission_id,)).fetchone()
            if seen is not None:
                if seen[1] != annotator.id or seen[2] != assignment_id:
                    raise Conflict("this submission_id was already used for another submission")
                return Receipt(seen[0], submission_id, True)
            item = self._assignment(conn, annotator, assignment_id)
            if conn.execute("SELECT 1 FROM submissions WHERE assignment_id = ? AND undone = 0", (assignment_id,)).fetchone():
                raise Conflict(f"assignment {assignment_id} is already answered (undo it first to change the answer)")
            canonical, skipped = canonical_answer(item, answer)
            cur = conn.execute(
                "INSERT INTO submissions (submission_id, assignment_id, annotator_id, item_id, task, answer, skipped, comment, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (submission_id, assignment_id, annotator.id, item.item_id, item.task, json.dumps(canonical, ensure_ascii=False),
                 int(skipped), comment, time.time()))
            return Receipt(cur.lastrowid, submission_id, False)

    def undo_last(self, annotator: Annotator) -> int:
        """Take back the annotator's latest live submission (its item comes back to the front of their queue); returns
        the assignment id. :class:`Conflict` when there is nothing to undo."""
        with self._write() as conn:
            row = conn.execute("SELECT id, assignment_id FROM submissions WHERE annotator_id = ? AND undone = 0 "
                               "ORDER BY id DESC LIMIT 1", (annotator.id,)).fetchone()
            if row is None:
                raise Conflict("nothing to undo")
            conn.execute("UPDATE submissions SET undone = 1 WHERE id = ?", (row[0],))
            return row[1]

    def submission_ids(self) -> list[str]:
        """Every submission id in the table (live or undone): what the durability tests count."""
        return [r[0] for r in self._conn().execute("SELECT submission_id FROM submissions ORDER BY id")]


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _side(value, shown: list[int], field: str) -> int:
    if value not in ("left", "right"):
        raise FeedbackError(f"{field} must be 'left' or 'right', got {value!r}")
    return shown[0 if value == "left" else 1]


def canonical_answer(item: Assignment, answer) -> tuple[dict, bool]:
    """Check an answer given in screen terms and turn it into the item's own response indices.

    Screen terms: ``{"skip": true}`` for any task; pairwise ``{"choice": "left"|"right"|"tie", "strength"?}``;
    ranking ``{"order": [screen positions, best first]}``; correction ``{"better": "left"|"right", "corrected": text}``;
    rating ``{"rating": 1..7}``; rules ``{"answers": {rule: "yes"|"no"|"unsure"}}`` covering every rule.
    Returns ``(answer, skipped)``; a bad answer raises :class:`FeedbackError` saying what is wrong.
    """
    if not isinstance(answer, dict):
        raise FeedbackError("answer must be a JSON object")
    if answer.get("skip") is True:
        if set(answer) != {"skip"}:
            raise FeedbackError("a skip carries no other answer fields")
        return {}, True
    task, shown = item.task, item.shown

    def only(*names):
        extra = sorted(set(answer) - set(names))
        if extra:
            raise FeedbackError(f"unexpected answer field(s) for a {task} item: {', '.join(extra)}")

    if task == "pairwise":
        only("choice", "strength")
        choice, strength = answer.get("choice"), answer.get("strength")
        if choice not in ("left", "right", "tie"):
            raise FeedbackError(f"choice must be 'left', 'right' or 'tie', got {choice!r}")
        if strength is not None and strength not in STRENGTH_MARGIN:
            raise FeedbackError(f"strength must be one of {', '.join(STRENGTH_MARGIN)} (or absent), got {strength!r}")
        if choice == "tie" and strength is not None:
            raise FeedbackError("a tie has no strength")
        winner = "tie" if choice == "tie" else _side(choice, shown, "choice")
        return {"winner": winner, "strength": strength, "left": shown[0]}, False
    if task == "ranking":
        only("order")
        order = answer.get("order")
        n = len(shown)
        if (not isinstance(order, list) or sorted(order) != list(range(n))
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in order)):
            raise FeedbackError(f"order must list each of the {n} screen positions 0..{n - 1} once, best first")
        return {"order": [shown[i] for i in order]}, False
    if task == "correction":
        only("better", "corrected")
        better = _side(answer.get("better"), shown, "better")
        corrected = answer.get("corrected")
        if not isinstance(corrected, str) or not corrected.strip():
            raise FeedbackError("corrected must be the edited (non-empty) text of the better response")
        if len(corrected) > MAX_CORRECTION:
            raise FeedbackError(f"corrected is longer than {MAX_CORRECTION} characters")
        if any(corrected.strip() == r.strip() for r in item.responses):
            raise FeedbackError("corrected is identical to a response: edit the better response to improve it")
        return {"better": better, "corrected": corrected}, False
    if task == "rating":
        only("rating")
        rating = answer.get("rating")
        lo, hi = RATING_RANGE
        if not isinstance(rating, int) or isinstance(rating, bool) or not lo <= rating <= hi:
            raise FeedbackError(f"rating must be a whole number from {lo} to {hi}, got {rating!r}")
        return {"rating": rating}, False
    only("answers")
    answers = answer.get("answers")
    if not isinstance(answers, dict):
        raise FeedbackError("answers must be an object of rule: yes | no | unsure")
    missing = [r for r in item.rules if r not in answers]
    extra = [r for r in answers if r not in item.rules]
    if missing or extra:
        raise FeedbackError(f"answers must cover exactly this item's {len(item.rules)} rules"
                            + (f"; missing {len(missing)}" if missing else "") + (f"; unknown {len(extra)}" if extra else ""))
    bad = [v for v in answers.values() if v not in RULE_VERDICTS]
    if bad:
        raise FeedbackError(f"each rule's answer must be yes, no or unsure, got {bad[0]!r}")
    return {"answers": {r: answers[r] for r in item.rules}}, False
