"""One row's fields, checked: every format's reader (:mod:`preftune.data.convert`, :mod:`preftune.data.native`) and
the rule data of :mod:`preftune.rewards.rules` take their fields through these, so a missing or malformed field gets
the same error, naming the file, the row and the field, whatever the format.

Used as ``fields.prompt(row, source)``, ``fields.text(row, "goal", source)``, and so on.
"""

from __future__ import annotations

import re
from typing import Any

from preftune.data.formats import Source
from preftune.errors import DataError


class RowDropped(Exception):
    """A row a format's rule leaves out (not an error): always counted in ``LoadResult.skipped`` with its reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def require(row: dict, name: str, source: Source) -> Any:
    """The field's value; a missing or null field is an error that lists the fields the row has."""
    if name not in row or row[name] is None:
        present = ", ".join(sorted(row)) or "none"
        raise DataError(f"missing (the row has fields: {present})", file=source.file, row=source.row, field=name)
    return row[name]


def text(row: dict, name: str, source: Source, *, allow_empty: bool = False) -> str:
    """A text field (non-empty unless ``allow_empty``)."""
    value = require(row, name, source)
    if not isinstance(value, str):
        raise DataError(f"expected text, got {type(value).__name__}", file=source.file, row=source.row, field=name)
    if not allow_empty and not value.strip():
        raise DataError("is empty", file=source.file, row=source.row, field=name)
    return value


def conversation(value: Any, name: str, source: Source) -> list[dict]:
    """A non-empty list of {role, content} messages, copied with just those two keys."""
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of {role, content} messages", file=source.file, row=source.row, field=name)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"message {i} must be an object with 'role' and 'content'", file=source.file, row=source.row, field=name)
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise DataError(f"message {i} has unknown role '{m['role']}'", file=source.file, row=source.row, field=name)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def prompt(row: dict, source: Source, name: str = "prompt") -> Any:
    """A prompt: non-empty text, or a conversation that ends with a user (or system) turn."""
    value = require(row, name, source)
    if isinstance(value, str):
        if not value.strip():
            raise DataError("is empty", file=source.file, row=source.row, field=name)
        return value
    messages = conversation(value, name, source)
    if messages[-1]["role"] == "assistant":
        raise DataError("a conversational prompt must end with a user (or system) turn, not an assistant one",
                        file=source.file, row=source.row, field=name)
    return messages


def completion(row: dict, name: str, source: Source) -> str:
    """A completion: text, or a conversation whose single (last) turn is the assistant's."""
    value = require(row, name, source)
    if isinstance(value, list):
        messages = conversation(value, name, source)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise DataError("a conversational completion must be exactly one assistant message", file=source.file,
                            row=source.row, field=name)
        value = messages[0]["content"]
    if not isinstance(value, str):
        raise DataError(f"expected text, got {type(value).__name__}", file=source.file, row=source.row, field=name)
    if not value.strip():
        raise DataError("is an empty completion", file=source.file, row=source.row, field=name)
    return value


def flag(row: dict, name: str, source: Source) -> bool:
    """A true/false field: a boolean, 0 or 1, or the words true/false, yes/no."""
    value = require(row, name, source)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise DataError(f"expected true or false, got {value!r}", file=source.file, row=source.row, field=name)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' → [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]."""
    pieces = _HH_TURN.split(text)
    if pieces[0].strip():
        raise ValueError("text before the first 'Human:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": content.strip()} for speaker, content in zip(pieces[1::2], pieces[2::2])]


def skip_reason(err: DataError) -> str:
    """The reason recorded for a skipped bad row: its field and what is wrong with it."""
    return f"field '{err.field}' {err.reason}" if err.field else err.reason
