"""Distributional (pluralistic) alignment: how far the model's answer distribution is from a human one.

For a multiple-choice opinion question with options ``o_1..o_K`` and a human distribution ``q`` over them (e.g. the
share of survey respondents per option, as in OpinionQA, Santurkar et al. 2023), the model's distribution ``p`` is
read from the next-token probabilities of the option letters, renormalised over the K letters. The score is the
Jensen–Shannon distance ``sqrt(JSD(p, q))`` with base-2 logarithms (Endres & Schindelin 2003; a metric in [0, 1]),
as used for pluralistic alignment by Sorensen et al. 2024.

Input rows (JSONL / JSON / CSV): ``question``, ``options`` (list of strings) and ``human_distribution`` (a list of K
numbers, or a mapping option -> number; normalised to sum to one). Optional ``source`` and ``survey`` strings are kept
on the question; other fields are ignored. ``opinion_surveys.jsonl`` next to this module holds published survey toplines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preftune.data.readers import read_rows
from preftune.errors import DataError, PreftuneError
from preftune.eval.stats import mean_ci

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _normalise(values: Sequence[float], who: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or np.any(arr < 0) or not np.all(np.isfinite(arr)) or arr.sum() <= 0:
        raise PreftuneError(f"{who}: a distribution must be non-negative finite numbers with a positive sum, got {list(values)}")
    return arr / arr.sum()


def js_divergence(p: Sequence[float], q: Sequence[float], base: float = 2.0) -> float:
    """``JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)``, ``m = ½(p + q)`` (Lin 1991); inputs normalised first; ``[K]`` each."""
    pa, qa = _normalise(p, "js"), _normalise(q, "js")
    if pa.shape != qa.shape:
        raise PreftuneError(f"js: distributions over {pa.size} and {qa.size} options")
    m = 0.5 * (pa + qa)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(pa) + 0.5 * kl(qa)) / math.log(base)


def js_distance(p: Sequence[float], q: Sequence[float], base: float = 2.0) -> float:
    """Jensen–Shannon distance ``sqrt(JSD(p, q))``; in [0, 1] with base 2."""
    return math.sqrt(js_divergence(p, q, base))


@dataclass(frozen=True)
class OpinionQuestion:
    question: str
    options: tuple[str, ...]
    human: tuple[float, ...]
    row: int = 0
    source: str | None = None  # optional provenance fields, carried through unchanged
    survey: str | None = None


def read_opinions(path: str | Path, *, limit: int | None = None) -> list[OpinionQuestion]:
    import json

    out = []
    for row_number, row in read_rows(path):
        def need(name):
            if name not in row:
                raise DataError("missing field", file=str(path), row=row_number, field=name)
            value = row[name]
            return json.loads(value) if isinstance(value, str) and name != "question" else value

        options = need("options")
        if not isinstance(options, list) or len(options) < 2 or len(options) > len(LETTERS):
            raise DataError(f"options must be a list of 2 to {len(LETTERS)} strings", file=str(path), row=row_number, field="options")
        human = need("human_distribution")
        if isinstance(human, dict):
            missing = [o for o in options if o not in human]
            if missing:
                raise DataError(f"no probability for option {missing[0]!r}", file=str(path), row=row_number, field="human_distribution")
            human = [human[o] for o in options]
        if not isinstance(human, list) or len(human) != len(options):
            raise DataError(f"must have one number per option ({len(options)})", file=str(path), row=row_number, field="human_distribution")
        try:
            dist = _normalise([float(x) for x in human], "human_distribution")
        except (PreftuneError, TypeError, ValueError) as err:
            raise DataError(str(err), file=str(path), row=row_number, field="human_distribution") from None
        out.append(OpinionQuestion(str(need("question")), tuple(map(str, options)), tuple(dist.tolist()), row_number,
                                   source=None if row.get("source") is None else str(row["source"]),
                                   survey=None if row.get("survey") is None else str(row["survey"])))
        if limit is not None and len(out) >= limit:
            break
    return out


def opinion_prompt(q: OpinionQuestion) -> str:
    letters = LETTERS[: len(q.options)]
    options = "\n".join(f"{letter}. {o}" for letter, o in zip(letters, q.options))
    return f"{q.question}\n{options}\n\nAnswer with one letter: {', '.join(letters)}."


def evaluate_pluralistic(model, tokenizer, questions: Sequence[OpinionQuestion], *, batch_size: int = 8) -> dict:
    """Mean Jensen–Shannon distance (with interval) between the model's and the human distributions, per question too."""
    from preftune.generation.scoring import choice_logprobs

    per = []
    by_k: dict[int, list[int]] = {}
    for i, q in enumerate(questions):
        by_k.setdefault(len(q.options), []).append(i)
    model_dists: dict[int, list[float]] = {}
    for k, idx in by_k.items():
        lp = choice_logprobs(model, tokenizer, [opinion_prompt(questions[i]) for i in idx], list(LETTERS[:k]),
                             batch_size=batch_size, desc="pluralistic")
        for i, row in zip(idx, lp.exp().tolist()):
            model_dists[i] = row
    for i, q in enumerate(questions):
        d = js_distance(model_dists[i], q.human)
        per.append({"question": q.question, "model": model_dists[i], "human": list(q.human), "js_distance": d})
    dists = [p["js_distance"] for p in per]
    # a reference point: answering every question uniformly at random
    uniform = [js_distance([1.0] * len(q.options), q.human) for q in questions]
    return {"n": len(per), "js_distance": mean_ci(dists) if dists else None,
            "uniform_js_distance": sum(uniform) / len(uniform) if uniform else None, "per_question": per}
