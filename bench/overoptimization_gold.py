"""A synthetic gold reward for the over-optimisation benchmark (BENCHMARKS.md): a transparent rule, not a model.

gold(prompt, response) = relevance + variety − 1, where relevance is the share of the prompt's content words (letters
only, 4+ characters) that the response uses, and variety is the share of distinct words among the response's words
(repetition lowers it). An empty response scores −1. A proxy reward model trained on pairs labelled by this rule
learns it only approximately; optimising the proxy hard shows where the two part.
"""

from __future__ import annotations

import re

from preftune.data.formats import prompt_text

_WORD = re.compile(r"[a-z']+")


def gold(prompt, response: str) -> float:
    words = _WORD.findall(response.lower())
    if not words:
        return -1.0
    content = {w for w in _WORD.findall(prompt_text(prompt).lower()) if len(w) >= 4}
    relevance = len(content & set(words)) / len(content) if content else 0.0
    variety = len(set(words)) / len(words)
    return relevance + variety - 1.0
