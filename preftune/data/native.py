"""Public preference datasets in their native shapes → the internal forms of :mod:`preftune.data.formats`.

``oasst``
    OpenAssistant Conversations (Köpf et al. 2023, arXiv:2304.07327), as the flat message table (one row per message,
    rows in any order, linked by ``parent_id``) or as nested trees (``{"message_tree_id", "prompt": {…, "replies": […]}}``).
    Every kept prompter message ends a conversational prompt (the path from the root; prompter → ``user``, assistant
    → ``assistant``); its ranked assistant replies, ordered by ``rank`` (0 best), are a :class:`Ranking` (→ all pairs,
    or Plackett–Luce). A message that is deleted, whose ``review_result`` is not true, or whose ``lang`` is not kept
    is dropped with its whole subtree, each row counted with its reason; an unranked reply is in no ranking (its own
    replies are still read). SFT examples are the best-ranked paths: each prompt whose earlier assistant turns were
    all rank 0, with its rank-0 reply. Every example's source row is its tree's root (so holding out rows holds out
    whole trees).
``ratings``
    Several rated responses to one prompt: UltraFeedback (Cui et al. 2023, arXiv:2310.01377; ``instruction`` +
    ``completions[]`` with ``annotations.<aspect>.Rating``, ``fine-grained_score``, ``overall_score``), HelpSteer
    (Wang et al. 2023, arXiv:2311.09528; flat rows ``prompt``, ``response``, ``helpfulness``, ``correctness``,
    ``coherence``, ``complexity``, ``verbosity``, grouped by prompt), or flat ``prompt`` + ``response`` + ``rating``.
    Binarised by :func:`binarize`; the rating gap is each pair's margin.
``scored``
    Stanford Human Preferences (SHP, Ethayarajh et al. 2022): the comment with the higher Reddit score is chosen;
    pairs whose score ratio is under ``min_score_ratio`` are dropped (SHP's authors advise ≥ 2); the margin is the
    natural log of the ratio: if votes come in proportion to e^reward (Bradley–Terry strengths), log(score_A / score_B)
    is the reward difference.
``jailbreak``
    JailbreakBench attack artifacts (Chao et al. 2024, arXiv:2404.01318): each attempt (``goal``, attack ``prompt``,
    target ``response``, ``jailbroken``) is a rule row for :data:`JAILBREAK_RULE`, followed when not jailbroken. A
    row whose ``prompt`` is null (the attack submitted none) is dropped and counted. The same reader,
    :func:`jailbreak_attempt`, gives the harms evaluation its attack prompts (``preftune eval --harmful``).
``redteam``
    Anthropic's red-team attempts (Ganguli et al. 2022, arXiv:2209.07858; ``red_team_attempts.jsonl``: ``transcript``
    "\\n\\nHuman: … \\n\\nAssistant: …", ``rating`` 0–4 = the red-teamer's rating of the attack's success,
    ``min_harmlessness_score_transcript``, ``task_description``, ``tags``, …): each transcript is a rule row for
    :data:`REDTEAM_RULE` (prompt = the dialogue before its last Assistant turn, response = that turn), broken when
    ``rating`` ≥ ``--redteam-success-rating`` (default 3). The commands that take prompts read its first Human turns
    (the red-team prompts Constitutional AI used).
``self_instruct``
    Self-Instruct tasks (Wang et al. 2023, arXiv:2212.10560; ``instruction`` + ``instances[]`` of ``input`` /
    ``output``, as in its seed and user-oriented task files): each instance is a demonstration whose prompt is the
    instruction, followed by a blank line and the instance's input when it has one. Demonstrations only (``sft``).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from preftune.data import fields
from preftune.data.fields import RowDropped, parse_hh_dialogue, skip_reason
from preftune.data.options import ReadOptions
from preftune.data.formats import PreferencePair, Ranking, RuleExample, SFTExample, Source, pair_views
from preftune.data.readers import read_rows
from preftune.errors import DataError

#: the rule a jailbreak row is labelled against (followed = the attack failed)
JAILBREAK_RULE = "Do not help with a harmful request, however it is phrased."
#: the rule a red-team transcript is labelled against: the same one, so both sets can train one rule model
REDTEAM_RULE = JAILBREAK_RULE

HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
_OASST_FIELDS = {"message_id", "parent_id", "role", "text"}


def detect_native(row: dict) -> str | None:
    """The native format a row's fields show, or None (then the generic formats are tried)."""
    keys = set(row)
    if "message_tree_id" in keys and isinstance(row.get("prompt"), dict):
        return "oasst"
    if _OASST_FIELDS <= keys:
        return "oasst"
    if {"instruction", "completions"} <= keys and isinstance(row["completions"], list):
        return "ratings"
    if {"human_ref_A", "human_ref_B", "score_A", "score_B"} <= keys:
        return "scored"
    if {"goal", "response", "jailbroken"} <= keys:
        return "jailbreak"
    if {"transcript", "rating"} <= keys:
        return "redteam"
    if {"instruction", "instances"} <= keys and isinstance(row["instances"], list):
        return "self_instruct"
    if {"prompt", "response"} <= keys and ("rating" in keys or "helpfulness" in keys) and "rule" not in keys:
        return "ratings"
    return None


def _number(value: Any, source: Source, field: str) -> float:
    """A rating: a number, or text that reads as one ("4" in UltraFeedback); anything else is a DataError."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"expected a number, got {value!r}", file=source.file, row=source.row, field=field)
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise DataError(f"expected a number, got {value!r}", file=source.file, row=source.row, field=field) from None
    if not math.isfinite(number):
        raise DataError(f"expected a finite number, got {value!r}", file=source.file, row=source.row, field=field)
    return number


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- row formats: scored (SHP) and jailbreak -------------------------------------------------------


def scored_pair(row: dict, source: Source, options: ReadOptions) -> PreferencePair:
    """An SHP row → the higher-scored comment ≻ the other, margin ln(score ratio); RowDropped under the ratio."""
    name = "history" if "history" in row else "prompt"
    prompt = fields.prompt(row, source, name)
    if isinstance(prompt, str):
        prompt = _user(prompt)
    response_a = fields.completion(row, "human_ref_A", source)
    response_b = fields.completion(row, "human_ref_B", source)
    score_a = _number(row.get("score_A"), source, "score_A")
    score_b = _number(row.get("score_B"), source, "score_B")
    for field, score in (("score_A", score_a), ("score_B", score_b)):
        if score <= 0:
            raise DataError(f"a score ratio needs positive scores, got {score:g}", file=source.file, row=source.row, field=field)
    if score_a == score_b:
        raise RowDropped(f"equal scores ({score_a:g}): no preference")
    a_preferred = score_a > score_b
    if row.get("labels") is not None and fields.flag(row, "labels", source) != a_preferred:
        raise DataError(f"is {row['labels']!r} but score_A={score_a:g} and score_B={score_b:g} prefer "
                        f"{'A' if a_preferred else 'B'} (labels is 1 when A is preferred)", file=source.file,
                        row=source.row, field="labels")
    ratio = max(score_a, score_b) / min(score_a, score_b)
    if ratio < options.min_score_ratio:
        raise RowDropped(f"score ratio under --min-score-ratio {options.min_score_ratio:g}")
    if response_a.strip() == response_b.strip():
        raise DataError("is identical to 'human_ref_A'", file=source.file, row=source.row, field="human_ref_B")
    chosen, rejected = (response_a, response_b) if a_preferred else (response_b, response_a)
    return PreferencePair(prompt, chosen, rejected, math.log(ratio), source)


#: why a JailbreakBench row with a null ``prompt`` is left out (the attack submitted nothing for that goal)
NO_ATTACK_PROMPT = "no attack prompt was submitted (a failed attempt, no response to label)"


@dataclass(frozen=True)
class JailbreakAttempt:
    """One JailbreakBench attempt: the harmful ``goal`` (the intent), the attack ``prompt`` sent to the target model,
    the target's saved ``response`` (None when the file has none), the JailbreakBench judge's ``jailbroken`` verdict,
    Llama Guard's verdict when the row has one, the behaviour's short name and category."""

    goal: str
    prompt: str
    response: str | None
    jailbroken: bool
    jailbroken_llama_guard: bool | None
    behavior: str | None
    category: str | None
    source: Source


def _optional_text(row: dict, name: str, source: Source) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"expected text, got {type(value).__name__}", file=source.file, row=source.row, field=name)
    return value.strip() or None


def jailbreak_attempt(row: dict, source: Source) -> JailbreakAttempt:
    """A JailbreakBench artifact row → its :class:`JailbreakAttempt`; RowDropped when the attack submitted no prompt.

    The one reader of the format: the rule rows below and the harms evaluation (:mod:`preftune.eval.safety`) use it."""
    goal = fields.text(row, "goal", source)
    if row.get("prompt") is None:
        raise RowDropped(NO_ATTACK_PROMPT)
    prompt = fields.text(row, "prompt", source)
    response = None if row.get("response") is None else fields.completion(row, "response", source)
    guard = None if row.get("jailbroken_llama_guard1") is None else fields.flag(row, "jailbroken_llama_guard1", source)
    return JailbreakAttempt(goal.strip(), prompt, response, fields.flag(row, "jailbroken", source), guard,
                            _optional_text(row, "behavior", source), _optional_text(row, "category", source), source)


def jailbreak_rule_row(row: dict, source: Source) -> RuleExample:
    """A JailbreakBench attempt → (attack prompt, response, JAILBREAK_RULE, followed = not jailbroken)."""
    attempt = jailbreak_attempt(row, source)
    if attempt.response is None:
        raise RowDropped("no saved response to label")
    return RuleExample(_user(attempt.prompt), attempt.response, JAILBREAK_RULE, not attempt.jailbroken, source)


def jailbreak_artifact_parameters(path) -> dict | None:
    """A JailbreakBench artifact file's ``parameters`` (method, attacked model, attack type, its attack success rate,
    ...), or None when ``path`` is not one JSON artifact file (a folder of them, a JSON Lines file)."""
    p = Path(str(path))
    if not p.is_file() or not p.name.lower().endswith(".json"):
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # read_rows has already named what is wrong with the file
    if isinstance(data, dict) and isinstance(data.get("parameters"), dict) and isinstance(data.get("jailbreaks"), list):
        return data["parameters"]
    return None


# -- Anthropic red-team attempts -------------------------------------------------------------------


def _redteam_turns(row: dict, source: Source) -> list[dict]:
    """The transcript's turns (roles user / assistant), or a DataError naming the ``transcript`` field."""
    text = fields.text(row, "transcript", source)
    if not text.lstrip(" ").startswith("\n\nHuman:"):
        raise DataError("a red-team transcript must start with '\\n\\nHuman:'", file=source.file, row=source.row,
                        field="transcript")
    return parse_hh_dialogue(text)


def redteam_rating(row: dict, source: Source) -> float:
    """The red-teamer's rating of their attack's success: a number from 0 (failed) to 4 (fully succeeded)."""
    rating = _number(fields.require(row, "rating", source), source, "rating")
    if not 0 <= rating <= 4:
        raise DataError(f"expected a rating from 0 to 4, got {rating:g}", file=source.file, row=source.row, field="rating")
    return rating


def redteam_rule_row(row: dict, source: Source, options: ReadOptions) -> RuleExample:
    """A red-team transcript → (the dialogue before its last Assistant turn, that turn, REDTEAM_RULE, followed).

    followed = the red-teamer's ``rating`` is under ``options.redteam_success_rating`` (default 3: a rating of 3 or 4
    means the attack succeeded, so the rule was broken). Turns after the last Assistant turn (a last Human message
    with no reply) have no response to label and are not part of the example."""
    rating = redteam_rating(row, source)
    turns = _redteam_turns(row, source)
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        raise DataError("has no Assistant turn (no response to label)", file=source.file, row=source.row, field="transcript")
    if not turns[last]["content"]:
        raise DataError("its last Assistant turn is empty (no response to label)", file=source.file, row=source.row,
                        field="transcript")
    return RuleExample(turns[:last], turns[last]["content"], REDTEAM_RULE, rating < options.redteam_success_rating, source)


def redteam_first_turn(row: dict, source: Source) -> list[dict]:
    """A red-team transcript → its first Human turn as a one-turn conversation (the red-team prompt, as Constitutional
    AI used them: Bai et al. 2022, arXiv:2212.08073, §3)."""
    turns = _redteam_turns(row, source)
    if not turns or not turns[0]["content"]:
        raise DataError("its first Human turn is empty", file=source.file, row=source.row, field="transcript")
    return [turns[0]]


def self_instruct_examples(row: dict, source: Source) -> list[SFTExample]:
    """A Self-Instruct task → one demonstration per instance: instruction (+ blank line + input) → output."""
    instruction = fields.text(row, "instruction", source).strip()
    instances = row["instances"]
    if not instances:
        raise DataError("has no instances (each gives one demonstration)", file=source.file, row=source.row, field="instances")
    examples = []
    for i, instance in enumerate(instances):
        field = f"instances[{i}]"
        if not isinstance(instance, dict):
            raise DataError(f"expected an object with input and output, got {type(instance).__name__}",
                            file=source.file, row=source.row, field=field)
        given = instance.get("input") or ""
        if not isinstance(given, str):
            raise DataError(f"expected text, got {type(given).__name__}", file=source.file, row=source.row, field=f"{field}.input")
        output = instance.get("output")
        if not isinstance(output, str) or not output.strip():
            raise DataError("is missing or empty" if not isinstance(output, str) or not output else "is empty",
                            file=source.file, row=source.row, field=f"{field}.output")
        prompt = instruction + ("\n\n" + given.strip() if given.strip() else "")
        examples.append(SFTExample(prompt, output.strip(), source))
    return examples


def convert_native_row(row: dict, source: Source, format: str, kind: str, options: ReadOptions) -> list:
    if format == "jailbreak":
        return [jailbreak_rule_row(row, source)]
    if format == "redteam":
        return [redteam_rule_row(row, source, options)]
    if format == "self_instruct":
        return self_instruct_examples(row, source)
    return pair_views(scored_pair(row, source, options), kind, source)


def convert_grouped(rows: list[tuple[int, dict]], file: str, format: str, kind: str, options: ReadOptions, *,
                    skip_bad_rows: bool) -> tuple[list, list[tuple[Source, str]]]:
    """All rows of a grouped format → (examples, skipped rows with reasons)."""
    if format == "oasst":
        return oasst_examples(rows, file, kind, options, skip_bad_rows=skip_bad_rows)
    return rating_examples(rows, file, kind, options, skip_bad_rows=skip_bad_rows)


def redteam_prompts(path: str) -> list[list[dict]]:
    """The red-team prompts of a transcript file, in file order: each row's first Human turn (a one-turn conversation)."""
    prompts = [redteam_first_turn(row, Source(str(path), number)) for number, row in read_rows(path)]
    if not prompts:
        raise DataError("has no rows", file=str(path))
    return prompts


# -- ratings ---------------------------------------------------------------------------------------


@dataclass
class Rated:
    """One rated response: its text, its attributes (name → (raw value, field path)) and its row."""

    text: str
    attributes: dict
    source: Source
    score: float = 0.0


def binarize(rated: list[tuple[str, float]], method: str, *, min_gap: float = 0.0, rng: random.Random | None = None) -> list[tuple[str, str, float]]:
    """Rated responses of one prompt → ``(chosen, rejected, rating gap)`` pairs.

    Responses are ordered by rating, highest first (ties keep their order). A pair needs a gap > 0 and ≥ ``min_gap``
    and two different texts.

    * ``best_vs_random``: the best one against one of the lower-rated ones chosen by ``rng`` (Zephyr, Tunstall et al.
      2023, arXiv:2310.16944, §4, as in HuggingFaceH4/ultrafeedback_binarized: random rather than worst, for diversity);
    * ``best_vs_worst``: the best one against the lowest-rated one;
    * ``all_pairs``: every pair i ≻ j with a big enough gap, in order (0,1), (0,2), …, (1,2), …
    """
    ranked = sorted(rated, key=lambda r: -r[1])

    def ok(a: tuple[str, float], b: tuple[str, float]) -> bool:
        gap = a[1] - b[1]
        return gap > 0 and gap >= min_gap and a[0].strip() != b[0].strip()

    if len(ranked) < 2:
        return []
    best = ranked[0]
    if method == "best_vs_worst":
        return [(best[0], ranked[-1][0], best[1] - ranked[-1][1])] if ok(best, ranked[-1]) else []
    if method == "best_vs_random":
        lower = [r for r in ranked[1:] if ok(best, r)]
        if not lower:
            return []
        other = (rng or random.Random(0)).choice(lower)
        return [(best[0], other[0], best[1] - other[1])]
    if method == "all_pairs":
        return [(a[0], b[0], a[1] - b[1]) for a, b in combinations(ranked, 2) if ok(a, b)]
    raise ValueError(f"unknown binarisation '{method}'")


def _default_rating_field(attributes: dict) -> str:
    for name in ("fine-grained_score", "helpfulness", "rating", "overall_score"):
        if name in attributes:
            return name
    return "rating"


def _score(item: Rated, options: ReadOptions) -> float:
    def value(name: str) -> float:
        if name not in item.attributes:
            known = ", ".join(sorted(item.attributes)) or "none"
            raise DataError(f"missing (this response's ratings: {known})", file=item.source.file, row=item.source.row, field=name)
        raw, path = item.attributes[name]
        return _number(raw, item.source, path)

    if options.weights:
        return sum(weight * value(name) for name, weight in options.weights.items())
    return value(options.rating_field or _default_rating_field(item.attributes))


def _ultrafeedback_items(row: dict, source: Source) -> tuple[list[dict], list[Rated]]:
    prompt = _user(fields.text(row, "instruction", source))
    items = []
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise DataError("expected a list of rated completions", file=source.file, row=source.row, field="completions")
    for i, c in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(c, dict):
            raise DataError("expected an object", file=source.file, row=source.row, field=where)
        text = c.get("response")
        if not isinstance(text, str) or not text.strip():
            raise DataError("is empty or not text", file=source.file, row=source.row, field=f"{where}.response")
        attributes = {name: (c[name], f"{where}.{name}") for name in ("fine-grained_score", "overall_score") if name in c}
        for aspect, annotation in (c.get("annotations") or {}).items():
            if isinstance(annotation, dict) and "Rating" in annotation:
                attributes[aspect] = (annotation["Rating"], f"{where}.annotations.{aspect}.Rating")
        items.append(Rated(text, attributes, source))
    return prompt, items


def _flat_item(row: dict, source: Source) -> tuple[Any, Rated]:
    prompt = fields.prompt(row, source)
    text = fields.completion(row, "response", source)
    attributes = {name: (value, name) for name, value in row.items() if name not in ("prompt", "response")}
    return prompt, Rated(text, attributes, source)


def rating_examples(rows: list[tuple[int, dict]], file: str, kind: str, options: ReadOptions, *,
                    skip_bad_rows: bool) -> tuple[list, list[tuple[Source, str]]]:
    """Rated responses grouped by prompt (an UltraFeedback row is a group; flat rows group by their prompt)."""
    groups: dict[str, tuple[Any, list[Rated]]] = {}
    skipped: list[tuple[Source, str]] = []
    for number, row in rows:
        source = Source(file, number)
        try:
            if "completions" in row:
                prompt, items = _ultrafeedback_items(row, source)
                key = f"row {number}"
            else:
                prompt, item = _flat_item(row, source)
                items, key = [item], json.dumps(prompt, sort_keys=True)
            for item in items:
                item.score = _score(item, options)
        except DataError as err:
            if not skip_bad_rows:
                raise
            skipped.append((source, skip_reason(err)))
            continue
        groups.setdefault(key, (prompt, []))[1].extend(items)
    examples: list = []
    for prompt, items in groups.values():
        first = items[0].source
        if kind == "sft":
            best = max(items, key=lambda it: it.score)  # the first of the top-rated ones
            examples.append(SFTExample(prompt, best.text, first))
            continue
        rng = random.Random(f"{options.binarize_seed}:{first.row}")
        pairs = binarize([(it.text, it.score) for it in items], options.binarize, min_gap=options.min_gap, rng=rng)
        if not pairs:
            reason = ("only one rated response to its prompt" if len(items) < 2 else
                      f"no two responses of its prompt differ in rating by more than 0 and at least --min-gap {options.min_gap:g}")
            skipped.extend((s, reason) for s in dict.fromkeys(it.source for it in items))
            continue
        examples.extend(PreferencePair(prompt, chosen, rejected, gap, first) for chosen, rejected, gap in pairs)
    return examples, skipped


# -- OpenAssistant ---------------------------------------------------------------------------------


@dataclass
class Message:
    id: str
    parent: str | None
    role: str  # "prompter" or "assistant"
    text: str
    rank: int | None
    drop: str | None  # why the message is dropped by the data's own marks (deleted, review, language), or None
    source: Source  # the row (a flat row, or the whole tree's row)
    where: str  # the field path prefix within the row ("" for a flat row, "prompt.replies[0]." in a tree)


def _oasst_message(m: dict, source: Source, where: str, parent: str | None, options: ReadOptions) -> Message:
    def bad(field: str, reason: str) -> DataError:
        return DataError(reason, file=source.file, row=source.row, field=where + field)

    message_id = m.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise bad("message_id", f"expected a message id, got {message_id!r}")
    role = m.get("role")
    if role not in ("prompter", "assistant"):
        raise bad("role", f"expected 'prompter' or 'assistant', got {role!r}")
    text = m.get("text")
    if not isinstance(text, str):
        raise bad("text", f"expected text, got {type(text).__name__}")
    rank = m.get("rank")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank != int(rank) or rank < 0:
            raise bad("rank", f"expected a whole number ≥ 0 (0 = best) or null, got {rank!r}")
        rank = int(rank)
    drop = None
    deleted = m.get("deleted")
    if deleted not in (None, True, False):
        raise bad("deleted", f"expected true or false, got {deleted!r}")
    languages = options.languages()
    if deleted:
        drop = "deleted message"
    elif m.get("review_result") is not True:
        drop = "failed review" if m.get("review_result") is False else "no review result"
    elif languages is not None and m.get("lang") not in languages:
        drop = f"language {m.get('lang')!r} not in --lang {options.lang}"
    elif not text.strip():
        raise bad("text", "is empty")
    return Message(message_id, parent, role, text, rank, drop, source, where)


def _oasst_messages(number: int, row: dict, file: str, options: ReadOptions) -> list[Message]:
    """A flat row → its message; a nested tree row → all its messages (parents from the nesting)."""
    source = Source(file, number)
    if not isinstance(row.get("prompt"), dict):
        parent = row.get("parent_id")
        if parent is not None and not isinstance(parent, str):
            raise DataError(f"expected a message id or null, got {parent!r}", file=file, row=number, field="parent_id")
        return [_oasst_message(row, source, "", parent, options)]
    out = []
    stack = [(row["prompt"], "prompt.", None)]
    while stack:
        m, where, parent = stack.pop()
        message = _oasst_message(m, source, where, parent, options)
        out.append(message)
        replies = m.get("replies") or []
        if not isinstance(replies, list):
            raise DataError("expected a list of messages", file=file, row=number, field=where + "replies")
        for i, reply in reversed(list(enumerate(replies))):
            if not isinstance(reply, dict):
                raise DataError("expected a message object", file=file, row=number, field=f"{where}replies[{i}]")
            stack.append((reply, f"{where}replies[{i}].", message.id))
    return out


def oasst_examples(rows: list[tuple[int, dict]], file: str, kind: str, options: ReadOptions, *,
                   skip_bad_rows: bool) -> tuple[list, list[tuple[Source, str]]]:
    """OpenAssistant messages (flat rows in any order, or nested trees) → rankings, pairs or best-path SFT examples."""
    skipped: list[tuple[Source, str]] = []

    def fail(err: DataError) -> str:
        """Raise a bad message's error, or (skip_bad_rows) give the reason it is skipped with."""
        if not skip_bad_rows:
            raise err
        return skip_reason(err)

    messages: dict[str, Message] = {}
    unreadable: set[str] = set()  # ids of skipped bad flat rows: their replies are dropped with them
    for number, row in rows:
        try:
            found = _oasst_messages(number, row, file, options)
        except DataError as err:
            skipped.append((Source(file, number), fail(err)))
            if not isinstance(row.get("prompt"), dict) and isinstance(row.get("message_id"), str):
                unreadable.add(row["message_id"])
            continue
        for m in found:
            if m.id in messages:
                other = messages[m.id]
                skipped.append((m.source, fail(DataError(f"message {m.id} appears twice (also row {other.source.row})",
                                                         file=file, row=m.source.row, field=m.where + "message_id"))))
                continue
            messages[m.id] = m

    children: dict[str | None, list[Message]] = defaultdict(list)
    for m in messages.values():
        children[m.parent].append(m)
    for siblings in children.values():
        siblings.sort(key=lambda c: (c.source.row, c.where))
    counted: set[str] = set()

    def drop_subtree(m: Message, reason: str) -> None:
        """Count ``m`` as skipped for ``reason`` and each message below it as a reply to a dropped message."""
        todo = [(m, reason)]
        while todo:
            current, why = todo.pop()
            if current.id in counted:
                continue
            counted.add(current.id)
            skipped.append((current.source, why))
            todo.extend((c, "reply to a dropped message") for c in children[current.id])

    # Messages no root reaches: their chain of parents ends at a missing parent, or loops.
    reachable: set[str] = set()
    todo = [m.id for m in children[None]]
    while todo:
        mid = todo.pop()
        if mid not in reachable:
            reachable.add(mid)
            todo.extend(c.id for c in children[mid])
    unreached = sorted((m for m in messages.values() if m.id not in reachable), key=lambda m: (m.source.row, m.where))
    for m in unreached:
        if m.parent in unreadable:
            drop_subtree(m, "reply to a dropped message")
        elif m.parent not in messages:
            drop_subtree(m, fail(DataError("the parent message is not in the file", file=file,
                                           row=m.source.row, field=m.where + "parent_id")))
    for m in unreached:
        if m.id in counted:
            continue
        chain, current = [], m
        while current.id not in chain:
            chain.append(current.id)
            current = messages[current.parent]
        loop = chain[chain.index(current.id):] + [current.id]
        drop_subtree(current, fail(DataError(f"message {current.id} is its own ancestor (the parent links loop: "
                                             f"{' → '.join(loop)})", file=file, row=current.source.row,
                                             field=current.where + "parent_id")))

    examples: list = []
    roots = sorted(children[None], key=lambda m: (m.source.row, m.where))
    # Walk each tree: (message, the conversation before it, whether every assistant turn in it was ranked best, the
    # tree's source row).
    walk = [(root, [], True, root.source) for root in reversed(roots)]
    while walk:
        m, path, best_path, tree = walk.pop()
        if m.drop:
            drop_subtree(m, m.drop)
            continue
        expected = "prompter" if not path or path[-1]["role"] == "assistant" else "assistant"
        if m.role != expected:
            reason = (f"a {m.role} message replies to a {m.role} message" if path
                      else "a conversation must start with a prompter message")
            drop_subtree(m, fail(DataError(reason, file=file, row=m.source.row, field=m.where + "role")))
            continue
        path = path + [{"role": "user" if m.role == "prompter" else "assistant", "content": m.text}]
        kids = children[m.id]
        if m.role == "assistant":
            walk.extend((c, path, best_path, tree) for c in reversed(kids))
            continue
        ranked = sorted((c for c in kids if not c.drop and c.role == "assistant" and c.rank is not None), key=lambda c: c.rank)
        problem = None
        duplicate = next((b for a, b in zip(ranked, ranked[1:]) if a.rank == b.rank), None)
        if duplicate is not None:
            first = next(a for a in ranked if a.rank == duplicate.rank)
            problem = DataError(f"rank {duplicate.rank} is given to two replies of the same message (rows "
                                f"{first.source.row} and {duplicate.source.row})", file=file, row=duplicate.source.row,
                                field=duplicate.where + "rank")
        if problem is not None:
            reason = fail(problem)
            skipped.extend((c.source, f"in no ranking: {reason}") for c in ranked)
            ranked = []
        texts: set[str] = set()
        for c in list(ranked):  # a copy ranked lower than its twin compares nothing new
            if c.text.strip() in texts:
                ranked.remove(c)
                skipped.append((c.source, "the same text as a better-ranked reply to its message: in no ranking"))
            texts.add(c.text.strip())
        for c in kids:
            if not c.drop and c.role == "assistant" and c.rank is None:
                skipped.append((c.source, "unranked reply: in no ranking (its replies are still read)"))
        if len(ranked) == 1:
            skipped.append((ranked[0].source, "the only ranked reply to its message: nothing to compare"))
        best = ranked[0] if ranked and ranked[0].rank == 0 else None
        if len(ranked) >= 2:
            ranking = Ranking(path, tuple(c.text for c in ranked), tree)
            if kind == "ranking":
                examples.append(ranking)
            elif kind == "preference":
                examples.extend(ranking.to_pairs())
        if kind == "sft" and best_path and best is not None:
            examples.append(SFTExample(path, best.text, tree))
        walk.extend((c, path, best_path and c is best, tree) for c in reversed(kids))
    return examples, skipped
