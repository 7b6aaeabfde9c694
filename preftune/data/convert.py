"""Turning rows of any supported format into the internal forms of :mod:`preftune.data.formats`.

Formats (``format=``):

============  ==========================================================================================
``sft``        ``prompt`` + ``completion``; or ``messages`` (the last assistant turn is the completion);
               or Alpaca-style ``instruction`` (+ ``input``) + ``output``
``preference`` ``prompt`` + ``chosen`` + ``rejected`` (+ ``margin``, + ``label``: a soft label P(chosen ≻ rejected) in
               [0, 1]): plain text or conversational; the prompt may be implicit (``chosen``/``rejected`` conversations sharing every turn but the last)
``hh``         Anthropic HH dialogue: ``chosen``/``rejected`` strings "\\n\\nHuman: … \\n\\nAssistant: …" sharing a prefix
``ranking``    ``prompt`` + ``responses`` ordered best to worst → all K·(K−1)/2 pairs
``correction`` ``prompt`` + ``chosen`` + ``rejected`` + ``corrected`` → corrected ≻ chosen, corrected ≻ rejected, chosen ≻ rejected
``unpaired``   ``prompt`` + ``completion`` + ``label`` (true = desirable), as KTO uses
``rule``       ``prompt`` + ``response`` + ``rule`` + ``followed`` (true/false)
``oasst``      OpenAssistant messages, a flat table (``message_id``, ``parent_id``, ``role``, ``text``, ``rank``, …) or
               nested trees (``message_tree_id`` + ``prompt`` with ``replies``) → rankings of sibling replies
``ratings``    several rated responses per prompt: UltraFeedback (``instruction`` + ``completions``), HelpSteer
               (``prompt`` + ``response`` + helpfulness, …; rows grouped by prompt), or ``prompt`` + ``response`` + ``rating``
``scored``     Stanford SHP: ``history`` + ``human_ref_A``/``human_ref_B`` + ``score_A``/``score_B`` → the higher-scored one
``jailbreak``  JailbreakBench attack artifacts: ``goal`` + ``prompt`` + ``response`` + ``jailbroken`` → rule rows
``redteam``    Anthropic red-team attempts: ``transcript`` + ``rating`` (0–4) → rule rows (broken when the attack succeeded)
``auto``       detected from the first row's fields
============  ==========================================================================================

Kinds (``kind=``) are what the caller needs: ``sft``, ``preference``, ``unpaired``, ``rule`` or ``ranking``.
Preference data also gives SFT examples (prompt + chosen) and unpaired ones (chosen → desirable,
rejected → undesirable); rankings and corrections give pairs. The native formats of public datasets (``oasst``,
``ratings``, ``scored``, ``jailbreak``, ``self_instruct``, ``redteam``) are read by :mod:`preftune.data.native`, with the choices in :class:`ReadOptions`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from preftune.data.formats import (
    pair_views,
    PreferencePair,
    Ranking,
    RuleExample,
    SFTExample,
    Source,
    UnpairedExample,
    correction_pairs,
)
from preftune.data import fields
from preftune.data.fields import RowDropped, parse_hh_dialogue, skip_reason
from preftune.data.options import ReadOptions
from preftune.data.native import convert_grouped, convert_native_row, detect_native
from preftune.data.readers import read_rows
from preftune.errors import DataError, PreftuneError

FORMATS = ("auto", "sft", "preference", "hh", "ranking", "correction", "unpaired", "rule", "oasst", "ratings", "scored",
           "jailbreak", "self_instruct", "redteam")
KINDS = ("sft", "preference", "unpaired", "rule", "ranking")

# Which formats can produce which kinds.
_PRODUCES = {
    "sft": {"sft"},
    "preference": {"preference", "sft", "unpaired", "ranking"},
    "hh": {"preference", "sft", "unpaired", "ranking"},
    "ranking": {"preference", "sft", "ranking"},
    "correction": {"preference", "sft"},
    "unpaired": {"unpaired", "sft"},
    "rule": {"rule"},
    "oasst": {"preference", "sft", "ranking"},
    "ratings": {"preference", "sft"},
    "scored": {"preference", "sft", "unpaired", "ranking"},
    "jailbreak": {"rule"},
    "self_instruct": {"sft"},
    "redteam": {"rule"},
}
#: Formats that hold rule labels (what a rule model trains and is evaluated on).
RULE_FORMATS = ("rule", "jailbreak", "redteam")

# Formats whose examples come from several rows (a message table, rated rows of one prompt): read whole, then converted.
GROUPED_FORMATS = ("oasst", "ratings")


@dataclass
class LoadResult:
    """What a file gave: the examples, how many rows were read, and every skipped row with its reason."""

    examples: list
    rows: int
    skipped: list[tuple[Source, str]] = field(default_factory=list)
    format: str = ""
    path: str = ""

    def skip_summary(self) -> str:
        if not self.skipped:
            return "no rows skipped"
        reasons = Counter(reason for _, reason in self.skipped)
        parts = ", ".join(f"{n} × {reason}" for reason, n in reasons.most_common())
        return f"skipped {len(self.skipped)} of {self.rows} rows: {parts}"


def _distinct(chosen: str, rejected: str, source: Source) -> None:
    if chosen.strip() == rejected.strip():
        raise DataError("is identical to 'chosen' (a pair must compare two different responses)", file=source.file,
                        row=source.row, field="rejected")


# -- row converters --------------------------------------------------------------------------------


def sft_from_row(row: dict, source: Source) -> SFTExample:
    if "messages" in row:
        messages = fields.conversation(row["messages"], "messages", source)
        if messages[-1]["role"] != "assistant":
            raise DataError("the last message must be the assistant's reply to learn", file=source.file, row=source.row, field="messages")
        if len(messages) < 2:
            raise DataError("needs at least one turn before the assistant's reply", file=source.file, row=source.row, field="messages")
        if not str(messages[-1]["content"]).strip():
            raise DataError("the assistant's reply is an empty completion", file=source.file, row=source.row, field="messages")
        return SFTExample(messages[:-1], messages[-1]["content"], source)
    if "instruction" in row and "output" in row:
        instruction = fields.text(row, "instruction", source)
        extra = row.get("input") or ""
        prompt = f"{instruction}\n\n{extra}" if str(extra).strip() else instruction
        return SFTExample([{"role": "user", "content": prompt}], fields.completion(row, "output", source), source)
    return SFTExample(fields.prompt(row, source), fields.completion(row, "completion", source), source)


def _implicit_prompt(chosen: list[dict], rejected: list[dict], source: Source) -> tuple[list[dict], str, str]:
    """Conversations sharing every turn but the last: the shared turns are the prompt."""
    if chosen[:-1] != rejected[:-1]:
        raise DataError("chosen and rejected conversations must share every turn but their last (an implicit prompt)",
                        file=source.file, row=source.row, field="chosen")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise DataError("the last turn must be the assistant's", file=source.file, row=source.row, field=name)
    if not chosen[:-1]:
        raise DataError("no shared turns to use as the prompt", file=source.file, row=source.row, field="chosen")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _margin(row: dict, source: Source) -> float | None:
    if row.get("margin") in (None, ""):
        return None
    try:
        return float(row["margin"])
    except (TypeError, ValueError):
        raise DataError(f"expected a number, got {row['margin']!r}", file=source.file, row=source.row, field="margin") from None


def _soft_label(row: dict, source: Source) -> float | None:
    """The optional soft label P(chosen ≻ rejected): a number in [0, 1] (absent or empty: a hard pair)."""
    value = row.get("label")
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"expected a probability in [0, 1], got {value!r}", file=source.file, row=source.row, field="label")
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"expected a probability in [0, 1], got {value!r}", file=source.file, row=source.row, field="label") from None
    if not 0.0 <= number <= 1.0:
        raise DataError(f"expected a probability in [0, 1], got {value!r}", file=source.file, row=source.row, field="label")
    return number


def pair_from_row(row: dict, source: Source) -> PreferencePair:
    conversations = isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list)
    # Whole conversations share their prompt turns; a `prompt` beside them (HuggingFaceH4/ultrafeedback_binarized) repeats
    # the last user turn, so the shared turns are the prompt.
    if conversations and ("prompt" not in row or len(row["chosen"]) > 1 or len(row["rejected"]) > 1):
        prompt, chosen, rejected = _implicit_prompt(fields.conversation(row["chosen"], "chosen", source),
                                                    fields.conversation(row["rejected"], "rejected", source), source)
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not str(text).strip():
                raise DataError("is an empty completion", file=source.file, row=source.row, field=name)
    else:
        prompt = fields.prompt(row, source)
        chosen = fields.completion(row, "chosen", source)
        rejected = fields.completion(row, "rejected", source)
    _distinct(chosen, rejected, source)
    return PreferencePair(prompt, chosen, rejected, _margin(row, source), source, _soft_label(row, source))


def hh_pair_from_row(row: dict, source: Source) -> PreferencePair:
    """HH-RLHF: the prompt is the dialogue up to the last "Assistant:" the two strings share; the rest of each is its completion.

    A completion can run past one turn (a few HH rows continue with further Human/Assistant turns after the
    point where they diverge); it is kept whole, as text, so nothing is lost.
    """
    chosen_text = fields.text(row, "chosen", source, allow_empty=True)
    rejected_text = fields.text(row, "rejected", source, allow_empty=True)
    for name, text in (("chosen", chosen_text), ("rejected", rejected_text)):
        if not text.lstrip(" ").startswith("\n\nHuman:"):
            raise DataError("an HH dialogue must start with '\\n\\nHuman:'", file=source.file, row=source.row, field=name)
    n = 0
    limit = min(len(chosen_text), len(rejected_text))
    while n < limit and chosen_text[n] == rejected_text[n]:
        n += 1
    cut = chosen_text.rfind("\n\nAssistant:", 0, n)
    if cut < 0 or cut + len("\n\nAssistant:") > n:
        raise DataError("chosen and rejected share no dialogue up to an 'Assistant:' turn", file=source.file,
                        row=source.row, field="rejected")
    cut += len("\n\nAssistant:")
    try:
        prompt = parse_hh_dialogue(chosen_text[:cut])
    except ValueError as err:
        raise DataError(str(err), file=source.file, row=source.row, field="chosen") from None
    prompt = prompt[:-1]  # the trailing empty "Assistant:" marks where the completion starts
    chosen = chosen_text[cut:].strip()
    rejected = rejected_text[cut:].strip()
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text:
            raise DataError("is an empty completion (the final Assistant turn has no text)", file=source.file,
                            row=source.row, field=name)
    _distinct(chosen, rejected, source)
    return PreferencePair(prompt, chosen, rejected, None, source)


def ranking_from_row(row: dict, source: Source) -> Ranking:
    name = "responses" if "responses" in row else "ranking"
    responses = fields.require(row, name, source)
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError("expected a list of at least 2 responses, best first", file=source.file, row=source.row, field=name)
    texts = []
    for i, r in enumerate(responses):
        if not isinstance(r, str) or not r.strip():
            raise DataError(f"response {i} is empty or not text", file=source.file, row=source.row, field=name)
        texts.append(r)
    if len({t.strip() for t in texts}) != len(texts):
        raise DataError("has the same response twice", file=source.file, row=source.row, field=name)
    return Ranking(fields.prompt(row, source), tuple(texts), source)


def corrections_from_row(row: dict, source: Source) -> list[PreferencePair]:
    prompt = fields.prompt(row, source)
    chosen = fields.completion(row, "chosen", source)
    rejected = fields.completion(row, "rejected", source)
    corrected = fields.completion(row, "corrected", source)
    _distinct(chosen, rejected, source)
    for name, other in (("chosen", chosen), ("rejected", rejected)):
        if corrected.strip() == other.strip():
            raise DataError(f"is identical to '{name}'", file=source.file, row=source.row, field="corrected")
    return correction_pairs(prompt, chosen, rejected, corrected, source)


def unpaired_from_row(row: dict, source: Source) -> UnpairedExample:
    return UnpairedExample(fields.prompt(row, source), fields.completion(row, "completion", source), fields.flag(row, "label", source), source)


def rule_from_row(row: dict, source: Source) -> RuleExample:
    return RuleExample(fields.prompt(row, source), fields.completion(row, "response", source), fields.text(row, "rule", source),
                       fields.flag(row, "followed", source), source)


def detect_format(row: dict, file: str) -> str:
    keys = set(row)

    native = detect_native(row)
    if native is not None:
        return native
    if {"rule", "followed"} <= keys:
        return "rule"
    if "corrected" in keys:
        return "correction"
    if "responses" in keys or "ranking" in keys:
        return "ranking"
    if {"chosen", "rejected"} <= keys:
        if "prompt" not in keys and isinstance(row["chosen"], str) and row["chosen"].lstrip(" ").startswith("\n\nHuman:"):
            return "hh"
        return "preference"
    if "label" in keys and "completion" in keys:
        return "unpaired"
    if "messages" in keys or {"prompt", "completion"} <= keys or {"instruction", "output"} <= keys:
        return "sft"
    raise DataError(f"cannot tell the format from the fields {sorted(keys)}; name it with --format "
                    f"(one of {', '.join(FORMATS[1:])})", file=file, row=1)


def detect_file_format(path: str | Path, format: str = "auto") -> str:
    """The format of a data file: ``format`` unless it is ``auto``, else detected from its first row (the starter
    dataset is ``preference``)."""
    if format != "auto":
        return format
    if str(path) == "starter" or str(path).startswith("starter:"):
        return "preference"
    for _, row in read_rows(path):
        return detect_format(row, str(path))
    raise DataError("has no rows", file=str(path))


def convert_row(row: dict, source: Source, format: str, kind: str, options: ReadOptions | None = None) -> list:
    """One row in ``format`` → the examples of ``kind`` it gives (a list: rankings and corrections give several).

    Raises :class:`DataError` for a bad row and :class:`RowDropped` for a row the format's rule leaves out."""
    if format in ("scored", "jailbreak", "self_instruct", "redteam"):

        return convert_native_row(row, source, format, kind, options or ReadOptions())
    if format == "rule":
        return [rule_from_row(row, source)]
    if format == "unpaired":
        ex = unpaired_from_row(row, source)
        if kind == "sft":  # only the desirable completions are demonstrations
            return [SFTExample(ex.prompt, ex.completion, source)] if ex.label else []
        return [ex]
    if format == "sft":
        return [sft_from_row(row, source)]
    if format == "ranking":
        ranking = ranking_from_row(row, source)
        if kind == "ranking":
            return [ranking]
        if kind == "sft":
            return [SFTExample(ranking.prompt, ranking.responses[0], source)]
        return ranking.to_pairs()
    if format == "correction":
        pairs = corrections_from_row(row, source)
        if kind == "sft":
            return [SFTExample(pairs[0].prompt, pairs[0].chosen, source)]
        return pairs
    return pair_views(hh_pair_from_row(row, source) if format == "hh" else pair_from_row(row, source), kind, source)


def load_examples(path: str | Path, format: str = "auto", *, kind: str = "preference", skip_bad_rows: bool = False,
                  limit: int | None = None, split: str | None = None, options: ReadOptions | None = None) -> LoadResult:
    """Read ``path`` in ``format`` and return the examples of ``kind``.

    ``path`` is a file, a folder of files, a saved ``datasets`` folder, a hub dataset id, or ``starter``,
    ``starter:train``, ``starter:test`` (the built-in starter dataset). A bad row raises :class:`DataError`
    naming file, row and field; with ``skip_bad_rows=True`` it is skipped and counted in ``LoadResult.skipped``.
    ``limit`` stops after that many rows. Rows a format's rule leaves out (an OpenAssistant message marked
    deleted, an SHP pair under the score ratio, …) are always counted in ``skipped`` with their reason.
    ``options`` holds the native formats' choices (:class:`ReadOptions`).
    """
    options = options or ReadOptions()
    if format not in FORMATS:
        raise PreftuneError(f"unknown data format '{format}' (choose from {', '.join(FORMATS)})")
    if kind not in KINDS:
        raise PreftuneError(f"unknown example kind '{kind}' (choose from {', '.join(KINDS)})")
    file_label = str(path)
    rows = read_rows(path, split=split)
    examples: list = []
    skipped: list[tuple[Source, str]] = []
    grouped: list[tuple[int, dict]] = []
    count = 0
    for number, row in rows:
        if limit is not None and count >= limit:
            break
        count += 1
        source = Source(file_label, number)
        if format == "auto":
            format = detect_format(row, file_label)
        if kind not in _PRODUCES[format]:
            raise PreftuneError(f"{file_label}: '{format}' data cannot give {kind} examples "
                                f"(it gives: {', '.join(sorted(_PRODUCES[format]))})")
        if format in GROUPED_FORMATS:
            grouped.append((number, row))
            continue
        try:
            examples.extend(convert_row(row, source, format, kind, options))
        except RowDropped as dropped:
            skipped.append((source, dropped.reason))
        except DataError as err:
            if not skip_bad_rows:
                raise
            skipped.append((source, skip_reason(err)))
    if count == 0:
        raise DataError("has no rows", file=file_label)
    if grouped:

        group_examples, group_skipped = convert_grouped(grouped, file_label, format, kind, options, skip_bad_rows=skip_bad_rows)
        examples.extend(group_examples)
        skipped.extend(group_skipped)
    return LoadResult(examples, count, skipped, format, file_label)


def tokenize_all(examples: list, encode, *, skip_bad_rows: bool = False, skipped: list | None = None) -> list:
    """Apply ``encode(example)`` to each example; a :class:`DataError` (e.g. over the length limit) raises, or with
    ``skip_bad_rows`` is appended to ``skipped`` as ``(source, reason)`` and the example left out."""
    out = []
    for ex in examples:
        try:
            out.append(encode(ex))
        except DataError as err:
            if not skip_bad_rows:
                raise
            if skipped is not None:
                skipped.append((ex.source, f"field '{err.field}' {err.reason}" if err.field else err.reason))
    return out
