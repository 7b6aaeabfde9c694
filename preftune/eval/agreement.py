"""How well does a judge agree with people, and how well do people agree with each other? (AlpacaFarm, Dubois et al.
2023, §3 and App. C; the leave-one-out computation of AlpacaEval's "human agreement".)

Input: human judgements as JSON lines (what the feedback app exports and :class:`~preftune.eval.judges.HumanJudge`
reads): ``{"prompt", "response_a", "response_b", "preference"}`` with ``preference`` ``"a"``, ``"b"``, ``"tie"`` or a
number in [0, 1], and an optional ``annotator``. Judgements of the same two answers to the same prompt form one
*pair* (a judgement stored with the answers the other way round counts with its preference flipped).

Every preference becomes a verdict: ``a`` (p > 0.5 + margin), ``b`` (p < 0.5 − margin) or ``tie``. Then:

* **agreement with the people**: per pair, whether the judge's verdict is the mode of the people's verdicts
  (when several verdicts tie for the mode, the expected agreement with one of them drawn at random: 1/#modes if the
  judge's verdict is among them); the mean over pairs;
* **leave-one-out agreement** (pairs with ≥ 2 judgements): each judgement in turn is held out and the mode of the
  others is the target; the held-out *person's* agreement with it is the human–human agreement, the *judge's*
  agreement with it the comparable judge figure; both averaged over all held-out judgements. A judge that agrees
  with the people about as well as they agree with each other is as good as one more annotator;
* **position bias**: the share of decisive verdicts in which the answer shown first wins (people: ``response_a`` as
  stored, the order the app showed; a judge: its single-order verdicts, when it reports them — the local LLM judge
  does; a reward judge sees no order);
* **length bias**: the share of decisive verdicts, on pairs whose answers differ in length (words), in which the
  longer answer wins — for the judge and for the people.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preftune.data.readers import read_rows
from preftune.errors import DataError, PreftuneError
from preftune.data.formats import prompt_text
from preftune.eval.judges import _preference_value
from preftune.eval.stats import rate_with_ci


@dataclass
class JudgedPair:
    """Two answers to one prompt and the people's preferences for ``response_a`` (``votes``, in this orientation);
    ``shown_first[i]``: whether judgement i saw ``response_a`` first."""

    prompt: object
    response_a: str
    response_b: str
    votes: list[float] = field(default_factory=list)
    annotators: list[str | None] = field(default_factory=list)
    shown_first: list[bool] = field(default_factory=list)


def read_human_pairs(path: str | Path) -> list[JudgedPair]:
    """The judgements of a human-judgement JSONL file grouped into pairs (first-seen orientation)."""
    file = str(path)
    pairs: dict[tuple, JudgedPair] = {}
    for row_number, row in read_rows(path):
        for key in ("prompt", "response_a", "response_b", "preference"):
            if key not in row:
                raise DataError("missing field", file=file, row=row_number, field=key)
        for key in ("response_a", "response_b"):
            if not isinstance(row[key], str):
                raise DataError(f"an answer must be text, got {type(row[key]).__name__}", file=file, row=row_number, field=key)
        annotator = row.get("annotator")
        if annotator is not None and not isinstance(annotator, (str, int)):
            raise DataError(f"annotator must be a name or a number, got {annotator!r}", file=file, row=row_number, field="annotator")
        value = _preference_value(row["preference"], file, row_number)
        text = prompt_text(row["prompt"])
        key, swapped = (text, row["response_a"], row["response_b"]), (text, row["response_b"], row["response_a"])
        if key not in pairs and swapped in pairs:
            pair, value, first = pairs[swapped], 1.0 - value, False
        else:
            pair = pairs.setdefault(key, JudgedPair(row["prompt"], row["response_a"], row["response_b"]))
            first = True
        if annotator is not None and str(annotator) in pair.annotators:
            raise DataError(f"annotator {annotator!r} already judged this pair", file=file, row=row_number, field="annotator")
        pair.votes.append(value)
        pair.annotators.append(None if annotator is None else str(annotator))
        pair.shown_first.append(first)
    if not pairs:
        raise DataError("no judgements in the file", file=file)
    return list(pairs.values())


def verdict(p: float, margin: float = 0.0) -> str:
    """``"a"`` when p > 0.5 + margin, ``"b"`` when p < 0.5 − margin, else ``"tie"``."""
    return "a" if p > 0.5 + margin else "b" if p < 0.5 - margin else "tie"


def _agree_with_mode(v: str, others: Sequence[str]) -> float:
    """Expected agreement of verdict ``v`` with a mode of ``others`` drawn at random among equal modes."""
    counts = Counter(others)
    top = max(counts.values())
    modes = [k for k, c in counts.items() if c == top]
    return (v in modes) / len(modes)


def _words(text: str) -> int:
    return len(text.split())


def _share(hits: Sequence[bool]) -> float | None:
    return float(np.mean(hits)) if len(hits) else None


def human_statistics(pairs: Sequence[JudgedPair], *, margin: float = 0.0, length: Callable[[str], int] = _words) -> dict:
    """The people's own figures: leave-one-out agreement, position bias, length bias, counts."""
    loo = [_agree_with_mode(verdict(p.votes[j], margin), [verdict(v, margin) for k, v in enumerate(p.votes) if k != j])
           for p in pairs if len(p.votes) >= 2 for j in range(len(p.votes))]
    first, longer = [], []
    for p in pairs:
        la, lb = length(p.response_a), length(p.response_b)
        for v, shown in zip(p.votes, p.shown_first):
            d = verdict(v, margin)
            if d == "tie":
                continue
            first.append((d == "a") == shown)
            if la != lb:
                longer.append((d == "a") == (la > lb))
    annotators = {a for p in pairs for a in p.annotators if a is not None}
    return {"pairs": len(pairs), "judgements": sum(len(p.votes) for p in pairs),
            "pairs_with_several": sum(len(p.votes) >= 2 for p in pairs), "annotators": len(annotators),
            "loo_agreement": _share(loo), "loo_n": len(loo), "first_slot_wins": _share(first), "longer_wins": _share(longer)}


def judge_agreement(preferences: Sequence[float], pairs: Sequence[JudgedPair], *, margin: float = 0.0,
                    single_order: Sequence[float] | None = None, length: Callable[[str], int] = _words,
                    n_resamples: int = 2000, seed: int = 0) -> dict:
    """One judge against the people. ``preferences [P]``: the judge's P(response_a ≻ response_b) per pair;
    ``single_order``: its P(first shown wins) for every single-order query, when it reports them (position bias)."""
    if len(preferences) != len(pairs):
        raise PreftuneError(f"judge agreement: {len(preferences)} preferences for {len(pairs)} pairs")
    verdicts = [verdict(p, margin) for p in preferences]
    with_mode = [_agree_with_mode(v, [verdict(x, margin) for x in p.votes]) for v, p in zip(verdicts, pairs)]
    loo = [_agree_with_mode(v, [verdict(x, margin) for k, x in enumerate(p.votes) if k != j])
           for v, p in zip(verdicts, pairs) if len(p.votes) >= 2 for j in range(len(p.votes))]
    longer = []
    for v, p in zip(verdicts, pairs):
        la, lb = length(p.response_a), length(p.response_b)
        if v != "tie" and la != lb:
            longer.append((v == "a") == (la > lb))
    first = None
    if single_order is not None:
        decisive = [float(x) for x in single_order if float(x) != 0.5]
        first = _share([x > 0.5 for x in decisive])
    return {"pairs": len(pairs), "agreement": rate_with_ci(with_mode, n_resamples=n_resamples, seed=seed).as_dict(),
            "loo_agreement": _share(loo), "loo_n": len(loo), "first_slot_wins": first, "longer_wins": _share(longer),
            "ties": sum(v == "tie" for v in verdicts)}


def single_order_probabilities(details: dict) -> list[float] | None:
    """P(first shown wins) of each single-order query from a judge's details (``p_a_first``: response_a shown first;
    ``p_a_swapped``: response_b shown first, so P("A") is P(first wins) in both), or None."""
    if "p_a_first" in details and "p_a_swapped" in details:
        return list(details["p_a_first"]) + list(details["p_a_swapped"])
    return None
