"""Prompt sets and files of generations for evaluation.

A prompt set is any file ``read_rows`` reads (JSONL, JSON, CSV, Parquet, ...). The prompt is taken from the first
of :data:`PROMPT_FIELDS` present (or ``field=``): a string, a conversation (``messages``), MT-bench ``turns`` (the
first turn), or Alpaca's ``instruction`` with its optional ``input`` appended; in Anthropic red-team transcripts (the
``redteam`` data format) the first Human turn. A reference answer, when present, comes from ``reference`` or
``output`` (AlpacaEval's reference outputs) unless named.

A file of generations holds a prompt and a response per row (``response``, ``output``, ``completion`` or
``generation``); ``preftune generate`` writes ``{"prompt", "response", ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from preftune.data.formats import Prompt
from preftune.data.readers import read_rows
from preftune.errors import DataError, PreftuneError
from preftune.data.formats import prompt_text

PROMPT_FIELDS = ("prompt", "instruction", "question", "messages", "turns", "goal", "Behavior", "input", "query", "text")
REFERENCE_FIELDS = ("reference", "output")
RESPONSE_FIELDS = ("response", "output", "completion", "generation")


@dataclass
class PromptItem:
    prompt: Prompt
    reference: str | None = None
    response: str | None = None
    row: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return prompt_text(self.prompt).strip()


def _prompt_from(row: dict, name: str, file: str, row_number: int) -> Prompt:
    value = row[name]
    if name == "turns":
        if not isinstance(value, list) or not value:
            raise DataError("turns must be a non-empty list", file=file, row=row_number, field=name)
        value = value[0]
    if name == "messages" or isinstance(value, list):
        if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
            raise DataError("a conversation must be a list of {role, content}", file=file, row=row_number, field=name)
        msgs = [dict(m) for m in value]
        if msgs and msgs[-1]["role"] == "assistant":  # a conversation with its answer: prompt = everything before
            msgs = msgs[:-1]
        if not msgs:
            raise DataError("the conversation has no prompt turns", file=file, row=row_number, field=name)
        return msgs
    text = str(value if value is not None else "")
    if name == "instruction" and str(row.get("input") or "").strip():
        text = f"{text}\n\n{row['input']}"
    if not text.strip():
        raise DataError("empty prompt", file=file, row=row_number, field=name)
    return text


def load_prompt_set(path: str | Path, *, field: str | None = None, reference_field: str | None = None,
                    limit: int | None = None) -> list[PromptItem]:
    file = str(path)
    if field is None and _first_row_format(path) == "redteam":
        return _redteam_prompt_items(path, limit)
    items: list[PromptItem] = []
    name = ref = None
    for row_number, row in read_rows(path):
        if name is None:
            name = field or next((f for f in PROMPT_FIELDS if f in row), None)
            if name is None or name not in row:
                raise DataError(f"no prompt field: expected one of {', '.join(PROMPT_FIELDS)} (or --prompt-field); "
                                f"the fields are {', '.join(row)}", file=file, row=row_number, field=field)
            ref = reference_field or next((f for f in REFERENCE_FIELDS if f in row), None)
        if name not in row:
            raise DataError("missing field", file=file, row=row_number, field=name)
        reference = row.get(ref) if ref else None
        if reference is not None and not isinstance(reference, str):
            raise DataError(f"a reference must be text, got {type(reference).__name__}", file=file, row=row_number, field=ref)
        meta = {k: v for k, v in row.items() if k not in (name, ref) and isinstance(v, (str, int, float, bool))}
        items.append(PromptItem(_prompt_from(row, name, file, row_number), reference, None, row_number, meta))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataError("no prompts in the file", file=file)
    return items


def _first_row_format(path: str | Path) -> str | None:
    """The native data format the first row's fields show (None: none, or no rows)."""
    from preftune.data.native import detect_native

    for _, row in read_rows(path):
        return detect_native(row)
    return None


def _redteam_prompt_items(path: str | Path, limit: int | None) -> list[PromptItem]:
    """Red-team transcripts as a prompt set: each row's first Human turn (the red-team prompt), its other fields as meta."""
    from preftune.data.formats import Source
    from preftune.data.native import redteam_first_turn

    items = []
    for row_number, row in read_rows(path):
        meta = {k: v for k, v in row.items() if k != "transcript" and isinstance(v, (str, int, float, bool))}
        items.append(PromptItem(redteam_first_turn(row, Source(str(path), row_number)), None, None, row_number, meta))
        if limit is not None and len(items) >= limit:
            break
    return items


def load_generations(path: str | Path, *, prompt_field: str | None = None, response_field: str | None = None,
                     limit: int | None = None) -> list[PromptItem]:
    """Rows with a prompt and a response (the response field: ``response_field`` or the first of :data:`RESPONSE_FIELDS`)."""
    file = str(path)
    items: list[PromptItem] = []
    pname = rname = None
    for row_number, row in read_rows(path):
        if pname is None:
            pname = prompt_field or next((f for f in PROMPT_FIELDS if f in row), None)
            rname = response_field or next((f for f in RESPONSE_FIELDS if f in row), None)
            if pname is None or pname not in row:
                raise DataError(f"no prompt field: expected one of {', '.join(PROMPT_FIELDS)}", file=file, row=row_number, field=prompt_field)
            if rname is None or rname not in row:
                raise DataError(f"no response field: expected one of {', '.join(RESPONSE_FIELDS)}", file=file, row=row_number, field=response_field)
        if rname not in row:
            raise DataError("missing field", file=file, row=row_number, field=rname)
        response = row[rname]
        if not isinstance(response, str):
            raise DataError(f"a response must be text, got {type(response).__name__}", file=file, row=row_number, field=rname)
        meta = {k: v for k, v in row.items() if k not in (pname, rname) and isinstance(v, (str, int, float, bool))}
        items.append(PromptItem(_prompt_from(row, pname, file, row_number), row.get("reference"), response, row_number, meta))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataError("no generations in the file", file=file)
    return items


def align_responses(prompts: Sequence[PromptItem], generations: Sequence[PromptItem], source: str) -> list[str]:
    """The response of ``generations`` for each prompt, matched by prompt text (whitespace-trimmed)."""
    table: dict[str, str] = {}
    for g in generations:
        table.setdefault(g.key, g.response or "")
    missing = [p for p in prompts if p.key not in table]
    if missing:
        raise PreftuneError(f"{source} has no response for {len(missing)} of {len(prompts)} prompts "
                            f"(first missing: {missing[0].key[:80]!r}); prompts are matched by their text")
    return [table[p.key] for p in prompts]


def distinct_prompts(path: str, fmt: str = "auto", *, limit: int | None = None) -> list:
    """The distinct prompts of a data file, in file order: the prompts of preference or SFT data, the first Human turns
    of red-team transcripts (``redteam``), or a prompt set (a file with just a prompt field, e.g. ``{"prompt": ...}``
    lines or a HarmBench CSV)."""
    import json

    from preftune.data.convert import detect_file_format, load_examples
    from preftune.data.native import redteam_prompts

    try:
        detected = detect_file_format(path, fmt)
    except PreftuneError:  # a plain prompt set has no data format
        detected = None
    found = None  # the prompts of every example or row, in file order
    if detected == "redteam":
        found = redteam_prompts(path)
    for kind in ("preference", "sft") if found is None else ():
        try:
            found = [ex.prompt for ex in load_examples(path, fmt, kind=kind).examples]
            break
        except PreftuneError:
            continue
    if found is None:
        found = [item.prompt for item in load_prompt_set(path)]
    seen, prompts = set(), []
    for prompt in found:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts[:limit] if limit else prompts
