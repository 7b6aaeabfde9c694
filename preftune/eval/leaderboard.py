"""A leaderboard of several models: round-robin pairwise judgements and Bradley–Terry ratings on the Elo scale.

Every pair of models answers the same prompts and a judge compares them (any judge of :mod:`preftune.eval.judges`);
each (prompt, pair) is a *battle* with a preference ``P(a ≻ b)`` in [0, 1] (a tie is 0.5). As Chatbot Arena does
(Chiang et al. 2024, §4 and its notebook's logistic-regression fit), the ratings are the maximum-likelihood
Bradley–Terry strengths (Bradley & Terry 1952),

    P(a ≻ b) = σ(β_a − β_b),   rating = anchor + (400 / ln 10) · (β − mean β),

so a difference of 400 points means 10:1 odds, as in Elo; the ratings are fixed by their mean (``anchor``, default
1000) or by one model's rating. Intervals: the battles resampled with replacement and the fit repeated (percentile
bootstrap), as the Arena reports them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from preftune.errors import PreftuneError
from preftune.eval.stats import fit_logistic

ELO_SCALE = 400.0 / math.log(10.0)


@dataclass
class Battles:
    """``a [N]``, ``b [N]``: model indices; ``preference [N]``: P(model a ≻ model b)."""

    names: list[str]
    a: np.ndarray
    b: np.ndarray
    preference: np.ndarray

    def __post_init__(self):
        self.a = np.asarray(self.a, dtype=np.int64)
        self.b = np.asarray(self.b, dtype=np.int64)
        self.preference = np.asarray(self.preference, dtype=np.float64)
        if not (self.a.shape == self.b.shape == self.preference.shape) or self.a.ndim != 1:
            raise PreftuneError(f"battles: a, b and preference must be equal-length vectors, got {self.a.shape}, {self.b.shape}, {self.preference.shape}")
        if self.a.size == 0:
            raise PreftuneError("battles: no battles to rate")
        m = len(self.names)
        if np.any((self.a < 0) | (self.a >= m) | (self.b < 0) | (self.b >= m)):
            raise PreftuneError(f"battles: model indices must lie in [0, {m})")
        if np.any(self.a == self.b):
            raise PreftuneError("battles: a model cannot battle itself")
        if not np.all(np.isfinite(self.preference)) or np.any((self.preference < 0) | (self.preference > 1)):
            raise PreftuneError("battles: every preference must be a number in [0, 1]")


def fit_bradley_terry(battles: Battles, *, anchor: float = 1000.0, anchor_model: str | None = None, l2: float = 1e-6,
                      idx: np.ndarray | None = None) -> np.ndarray:
    """Elo-scale Bradley–Terry ratings ``[M]`` by (barely) regularised maximum likelihood with soft targets.

    ``idx`` selects battles (a bootstrap resample). With ``anchor_model``, that model's rating is ``anchor``; else
    the mean rating is. ``l2`` (on β) keeps the fit finite when a model wins or loses every battle.
    """
    m = len(battles.names)
    sel = np.arange(battles.a.size) if idx is None else idx
    x = np.zeros((sel.size, m))
    rows = np.arange(sel.size)
    x[rows, battles.a[sel]] += 1.0
    x[rows, battles.b[sel]] -= 1.0
    beta = fit_logistic(x, battles.preference[sel], l2=l2)
    ratings = ELO_SCALE * beta
    if anchor_model is not None:
        if anchor_model not in battles.names:
            raise PreftuneError(f"leaderboard: the anchor model {anchor_model!r} is not one of {', '.join(battles.names)}")
        return ratings - ratings[battles.names.index(anchor_model)] + anchor
    return ratings - ratings.mean() + anchor


def leaderboard(battles: Battles, *, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95, anchor: float = 1000.0,
                anchor_model: str | None = None) -> dict:
    """Ratings with bootstrap intervals, battles and mean preference per model, and the win-rate matrix.

    Returns ``{"ratings": [{"model", "rating", "ci_low", "ci_high", "battles", "win_rate"}] (best first),
    "win_matrix": {model: {opponent: mean P(model ≻ opponent)}}, "n_battles", "anchor"}``.
    """
    ratings = fit_bradley_terry(battles, anchor=anchor, anchor_model=anchor_model)
    rng = np.random.default_rng(seed)
    n = battles.a.size
    boot = np.stack([fit_bradley_terry(battles, anchor=anchor, anchor_model=anchor_model, idx=rng.integers(0, n, size=n))
                     for _ in range(n_resamples)])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    names = battles.names
    matrix: dict[str, dict[str, float | None]] = {a: {} for a in names}
    rows = []
    for i, name in enumerate(names):
        as_a, as_b = battles.a == i, battles.b == i
        prefs = np.concatenate([battles.preference[as_a], 1.0 - battles.preference[as_b]])
        rows.append({"model": name, "rating": float(ratings[i]), "ci_low": float(lo[i]), "ci_high": float(hi[i]),
                     "battles": int(prefs.size), "win_rate": float(prefs.mean()) if prefs.size else None})
        for j, other in enumerate(names):
            if i == j:
                continue
            p = np.concatenate([battles.preference[as_a & (battles.b == j)], 1.0 - battles.preference[as_b & (battles.a == j)]])
            matrix[name][other] = float(p.mean()) if p.size else None
    rows.sort(key=lambda r: -r["rating"])
    return {"ratings": rows, "win_matrix": matrix, "n_battles": int(n), "anchor": anchor_model or f"mean = {anchor:g}"}


def round_robin(judge, prompts: Sequence, responses: Mapping[str, Sequence[str]]) -> Battles:
    """Every pair of models (in the order given; the first of a pair is answer A) judged on every prompt."""
    names = list(responses)
    if len(names) < 2:
        raise PreftuneError(f"a leaderboard needs at least two models, got {len(names)}")
    for name, r in responses.items():
        if len(r) != len(prompts):
            raise PreftuneError(f"leaderboard: {name} has {len(r)} responses for {len(prompts)} prompts")
    a, b, pref = [], [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        result = judge.compare(list(prompts), list(responses[names[i]]), list(responses[names[j]]))
        a += [i] * len(prompts)
        b += [j] * len(prompts)
        pref += list(result.preferences)
    return Battles(names, np.array(a), np.array(b), np.array(pref))

