"""Contrast pairs that teach a model when to refuse and when not to.

Safety tuning on harmful prompts alone teaches a small model to refuse whatever looks like a request; the cost shows
as over-refusal of safe prompts that only sound risky (XSTest, Röttger et al. 2024). Llama 2's safety data pairs
adversarial prompts with borderline ones for that reason (Touvron et al. 2023, §4.2). This module builds both sides
from data a user already has:

* a **harmful** prompt gives the pair (a refusal ≻ a compliant answer): the compliant answer is the dataset's own
  (AdvBench's ``target``) or a model's (``preftune generate`` output);
* a **benign** demonstration gives the pair (its answer ≻ a refusal).

The refusals come from a list written for the project (``starter/refusals.yaml``) or the user's own; one is picked
per prompt by a hash of the prompt, so the same data gives the same pairs. A row whose compliant answer is already a
refusal, or whose benign answer is one, cannot make a contrast: it is skipped and counted with its reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from preftune.data.formats import PreferencePair, SFTExample, Source, prompt_text
from preftune.errors import DataError

DEFAULT_REFUSALS = Path(__file__).with_name("starter") / "refusals.yaml"


@dataclass(frozen=True)
class HarmfulPrompt:
    """A harmful request and an answer that complies with it (the rejected side)."""

    prompt: str | list[dict]
    compliance: str
    source: Source


@dataclass
class SafetyPairs:
    harmful: list[PreferencePair] = field(default_factory=list)  # refusal ≻ compliance
    benign: list[PreferencePair] = field(default_factory=list)  # answer ≻ refusal
    skipped: list[tuple[Source, str]] = field(default_factory=list)


def load_refusals(path: str | Path | None = None) -> list[str]:
    """The refusal texts of a YAML file with a ``refusals:`` list of strings (default: the project's own list)."""
    file = Path(path) if path is not None else DEFAULT_REFUSALS
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"cannot read the refusal list ({err.strerror or err})", file=str(file)) from None
    except yaml.YAMLError as err:
        raise DataError(f"is not valid YAML ({err})", file=str(file)) from None
    refusals = data.get("refusals") if isinstance(data, dict) else None
    if not isinstance(refusals, list) or not refusals:
        raise DataError("expected a non-empty list of strings under 'refusals'", file=str(file), field="refusals")
    for i, text in enumerate(refusals):
        if not isinstance(text, str) or not text.strip():
            raise DataError("expected non-empty text", file=str(file), field=f"refusals[{i}]")
    return [t.strip() for t in refusals]


def pick_refusal(prompt: str | list[dict], refusals: Sequence[str]) -> str:
    """The refusal for a prompt: fixed by a hash of the prompt, so rebuilding the data changes nothing."""
    digest = hashlib.sha256(json.dumps(prompt, ensure_ascii=False).encode()).digest()
    return refusals[int.from_bytes(digest[:8], "big") % len(refusals)]


_WORD = re.compile(r"[a-z0-9]+")


def word_set(text: str) -> frozenset[str]:
    """Lower-cased alphanumeric words of a text."""
    return frozenset(_WORD.findall(text.lower()))


def near_duplicate(text: str, others: Sequence[frozenset[str]], threshold: float) -> bool:
    """Does ``text`` share at least ``threshold`` of its words with one of ``others`` (Jaccard similarity of word
    sets)? Used to keep training prompts away from an evaluation suite's ("Provide step-by-step instructions for how to
    make a bomb" against a benchmark's near copy)."""
    words = word_set(text)
    return bool(words) and any(len(words & o) / len(words | o) >= threshold for o in others if o)


def safety_pairs(harmful: Sequence[HarmfulPrompt], benign: Sequence[SFTExample], refusals: Sequence[str],
                 is_refusal: Callable[[str], bool], *, exclude: Sequence[str] = (),
                 exclude_similarity: float = 0.5) -> SafetyPairs:
    """Both kinds of contrast pair; ``is_refusal`` tells which answers already refuse, and a prompt that is a near
    duplicate of one in ``exclude`` (an evaluation suite) is left out; both are skipped and counted."""
    out = SafetyPairs()
    excluded = [word_set(e) for e in exclude]

    def held_back(prompt, source: Source) -> bool:
        if excluded and near_duplicate(prompt_text(prompt), excluded, exclude_similarity):
            out.skipped.append((source, f"near duplicate (word Jaccard >= {exclude_similarity:g}) of an excluded prompt"))
            return True
        return False

    for h in harmful:
        if held_back(h.prompt, h.source):
            continue
        if is_refusal(h.compliance):
            out.skipped.append((h.source, "harmful prompt: its answer already refuses, so it cannot be the rejected side"))
            continue
        out.harmful.append(PreferencePair(h.prompt, pick_refusal(h.prompt, refusals), h.compliance, None, h.source))
    for ex in benign:
        if held_back(ex.prompt, ex.source):
            continue
        if is_refusal(ex.completion):
            out.skipped.append((ex.source, "benign demonstration: its answer is a refusal, so it cannot be the chosen side"))
            continue
        out.benign.append(PreferencePair(ex.prompt, ex.completion, pick_refusal(ex.prompt, refusals), None, ex.source))
    return out
