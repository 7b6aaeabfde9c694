"""The internal forms every data format is turned into.

A *prompt* is a plain string or a conversation (a list of ``{"role", "content"}`` dicts whose last
turn is the user's). A *completion* is always the assistant's reply text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Union

Prompt = Union[str, list]  # str | list[dict[str, str]]


@dataclass(frozen=True)
class Source:
    """Where an example came from: a file (or dataset name) and its 1-based row."""

    file: str
    row: int


@dataclass(frozen=True)
class SFTExample:
    prompt: Prompt
    completion: str
    source: Source | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PreferencePair:
    """``chosen`` is preferred to ``rejected`` for ``prompt``; ``margin`` (optional) says by how much.

    ``label`` (optional): a soft label, the probability that ``chosen`` ≻ ``rejected`` (e.g. an AI labeller's,
    averaged over orders and principles); ``None`` is a hard pair (probability 1)."""

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None
    source: Source | None = field(default=None, compare=False)
    label: float | None = None


@dataclass(frozen=True)
class UnpairedExample:
    """A single completion labelled desirable (True) or undesirable (False), as KTO uses."""

    prompt: Prompt
    completion: str
    label: bool
    source: Source | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RuleExample:
    """Whether ``response`` follows ``rule`` (Sparrow-style rule-violation labels)."""

    prompt: Prompt
    response: str
    rule: str
    followed: bool
    source: Source | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Ranking:
    """K responses ordered best to worst."""

    prompt: Prompt
    responses: tuple
    source: Source | None = field(default=None, compare=False)

    def to_pairs(self) -> list[PreferencePair]:
        """All K·(K−1)/2 pairs (i ≻ j for i ranked above j), in order (0,1), (0,2), …, (1,2), …"""
        return [
            PreferencePair(self.prompt, self.responses[i], self.responses[j], source=self.source)
            for i, j in combinations(range(len(self.responses)), 2)
        ]


def correction_pairs(prompt: Prompt, chosen: str, rejected: str, corrected: str, source: Source | None = None) -> list[PreferencePair]:
    """A human correction yields three pairs: corrected ≻ chosen, corrected ≻ rejected, chosen ≻ rejected."""
    return [
        PreferencePair(prompt, corrected, chosen, source=source),
        PreferencePair(prompt, corrected, rejected, source=source),
        PreferencePair(prompt, chosen, rejected, source=source),
    ]


def pair_views(pair: PreferencePair, kind: str, source: Source) -> list:
    """What one pair gives each kind: itself; its chosen side as a demonstration; chosen desirable and rejected
    undesirable (KTO); a two-response ranking."""
    if kind == "sft":
        return [SFTExample(pair.prompt, pair.chosen, source)]
    if kind == "unpaired":
        return [UnpairedExample(pair.prompt, pair.chosen, True, source), UnpairedExample(pair.prompt, pair.rejected, False, source)]
    if kind == "ranking":
        return [Ranking(pair.prompt, (pair.chosen, pair.rejected), source)]
    return [pair]


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one plain string, the only such view in preftune (logs, tables, judges, matching prompts across
    files): a conversation becomes ``role: content`` turns separated by a blank line."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)
