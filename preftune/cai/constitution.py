"""A constitution: the principles that critique, revise and compare responses (Bai et al. 2022, "Constitutional AI").

The file is YAML (schema below; ``preftune/cai/constitution.yaml`` is the project's default, written for it)::

    name: my-constitution                 # optional
    principles:                           # at least one; ids unique
      - id: harm                          # letters, digits, '-', '_'
        critique: "Point out ways the last response is harmful ..."     # asked after the response (SL-CAI)
        revision: "Rewrite the response to remove the harmful ..."      # asked after the critique
        question: "Which response is less harmful?"                    # the comparison for AI preference labels
    preference:                           # the multiple-choice question for AI labels (RL-CAI)
      template: |                         # must contain {conversation} {question} {response_a} {response_b}
        ...
      options: ["A", "B"]                 # the letters of the two responses, in the order shown
    examples:                             # optional few-shot critique -> revision chains
      - prompt: "..."
        response: "..."
        principle: harm                   # a principle id
        critique: "..."
        revision: "..."

Placeholders are replaced literally (other braces in the text are left alone). Every error names the file and the
field (``principles[2].critique``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from preftune.errors import DataError, PreftuneError

DEFAULT_CONSTITUTION = "default"
PLACEHOLDERS = ("{conversation}", "{question}", "{response_a}", "{response_b}")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str
    revision: str
    question: str


@dataclass(frozen=True)
class FewShotExample:
    prompt: str
    response: str
    principle: str
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    template: str
    options: tuple[str, str]
    examples: tuple[FewShotExample, ...] = ()
    name: str = ""
    path: str = ""
    by_id: dict = field(default_factory=dict, compare=False, repr=False)  # every principle of the file, by id

    def principle(self, pid: str) -> Principle:
        if pid not in self.by_id:
            raise PreftuneError(f"{self.path}: unknown principle id '{pid}' (the file has: {', '.join(self.by_id)})")
        return self.by_id[pid]

    def select(self, ids: list[str] | None) -> Constitution:
        """The same constitution restricted to ``ids`` (``None``: all); an unknown id is an error naming it."""
        if not ids:
            return self
        chosen = tuple(self.principle(i) for i in ids)
        # by_id stays the whole file's table: few-shot examples may show any of its principles
        return Constitution(chosen, self.template, self.options, self.examples, self.name, self.path, self.by_id)

    def render_question(self, principle: Principle, conversation: str, response_a: str, response_b: str) -> str:
        text = self.template
        for key, value in (("{question}", principle.question), ("{conversation}", conversation),
                           ("{response_a}", response_a), ("{response_b}", response_b)):
            text = text.replace(key, value)
        return text


def _text(mapping: dict, key: str, where: str, path: str) -> str:
    if key not in mapping or mapping[key] is None:
        raise DataError("missing", file=path, field=f"{where}{key}")
    value = mapping[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"must be non-empty text, got {value!r}", file=path, field=f"{where}{key}")
    return value.strip()


def parse_constitution(data, path: str) -> Constitution:
    """A :class:`Constitution` from parsed YAML ``data``; errors name ``path`` and the field."""
    if not isinstance(data, dict):
        raise DataError("a constitution must be a mapping with 'principles' and 'preference'", file=path)
    unknown = sorted(set(data) - {"name", "principles", "preference", "examples", "description"})
    if unknown:
        raise DataError("unknown field (expected name, description, principles, preference, examples)", file=path,
                        field=unknown[0])
    raw = data.get("principles")
    if raw is None:
        raise DataError("missing", file=path, field="principles")
    if not isinstance(raw, list) or not raw:
        raise DataError("must be a non-empty list of principles", file=path, field="principles")
    principles: list[Principle] = []
    by_id: dict[str, Principle] = {}
    for i, entry in enumerate(raw):
        where = f"principles[{i}]."
        if not isinstance(entry, dict):
            raise DataError("must be a mapping with id, critique, revision, question", file=path, field=f"principles[{i}]")
        extra = sorted(set(entry) - {"id", "critique", "revision", "question"})
        if extra:
            raise DataError("unknown field (expected id, critique, revision, question)", file=path, field=where + extra[0])
        pid = _text(entry, "id", where, path)
        if not _ID.match(pid):
            raise DataError(f"'{pid}' may hold only letters, digits, '-' and '_'", file=path, field=where + "id")
        if pid in by_id:
            raise DataError(f"duplicate principle id '{pid}'", file=path, field=where + "id")
        p = Principle(pid, _text(entry, "critique", where, path), _text(entry, "revision", where, path),
                      _text(entry, "question", where, path))
        principles.append(p)
        by_id[pid] = p
    pref = data.get("preference")
    if pref is None:
        raise DataError("missing", file=path, field="preference")
    if not isinstance(pref, dict):
        raise DataError("must be a mapping with template and options", file=path, field="preference")
    template = _text(pref, "template", "preference.", path)
    for ph in PLACEHOLDERS:
        if ph not in template:
            raise DataError(f"must contain the placeholder {ph}", file=path, field="preference.template")
    options = pref.get("options", ["A", "B"])
    if (not isinstance(options, list) or len(options) != 2 or not all(isinstance(o, str) and o.strip() for o in options)
            or options[0].strip() == options[1].strip()):
        raise DataError(f"must be two different option labels, like [A, B]; got {options!r}", file=path,
                        field="preference.options")
    examples = []
    for i, entry in enumerate(data.get("examples") or []):
        where = f"examples[{i}]."
        if not isinstance(entry, dict):
            raise DataError("must be a mapping", file=path, field=f"examples[{i}]")
        ex = FewShotExample(*(_text(entry, k, where, path) for k in ("prompt", "response", "principle", "critique", "revision")))
        if ex.principle not in by_id:
            raise DataError(f"unknown principle id '{ex.principle}' (the file has: {', '.join(by_id)})", file=path,
                            field=where + "principle")
        examples.append(ex)
    return Constitution(tuple(principles), template, (options[0].strip(), options[1].strip()), tuple(examples),
                        str(data.get("name") or ""), path, by_id)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Read a constitution file; ``None`` or ``"default"`` is the project's default (``preftune/cai/constitution.yaml``)."""
    if path is None or str(path) == DEFAULT_CONSTITUTION:
        text = resources.files("preftune.cai").joinpath("constitution.yaml").read_text(encoding="utf-8")
        label = "preftune/cai/constitution.yaml"
    else:
        p = Path(path)
        if not p.exists():
            raise PreftuneError(f"{p}: no such constitution file")
        text, label = p.read_text(encoding="utf-8"), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(f"not valid YAML: {err}", file=label) from None
    return parse_constitution(data, label)
