"""Statistics of pairwise comparisons: win / tie / loss rates, bootstrap intervals, length-controlled win rate.

A *preference* is a number in [0, 1]: the probability (or the judge's verdict: 1 = the model's answer is
better, 0.5 = tie, 0 = the baseline's is better) that the model beats the baseline on one prompt. The
win rate is the mean preference (ties count half, as AlpacaEval counts them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from preftune.errors import PreftuneError


def _array(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise PreftuneError(f"{name}: no values (an empty sample has no statistics)")
    if not np.all(np.isfinite(arr)):
        raise PreftuneError(f"{name}: value {int(np.flatnonzero(~np.isfinite(arr))[0])} is not finite")
    return arr


def bootstrap_ci(values: Sequence[float], *, stat: Callable[[np.ndarray], np.ndarray] | None = None,
                 n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of a statistic of one sample.

    ``values [n]``. Draws ``n_resamples`` resamples of size n with replacement, as the index matrix
    ``numpy.random.default_rng(seed).integers(0, n, size=(n_resamples, n))``, evaluates ``stat`` on each
    (``stat`` maps ``[n_resamples, n] -> [n_resamples]`` along axis 1; default: the mean) and returns the
    ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles (linear interpolation) of those values.
    """
    arr = _array(values, "bootstrap")
    if not 0 < confidence < 1:
        raise PreftuneError(f"bootstrap: confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise PreftuneError(f"bootstrap: n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    samples = arr[idx]
    stats = samples.mean(axis=1) if stat is None else np.asarray(stat(samples), dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass
class Rate:
    """A proportion with its bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)


def rate_with_ci(indicator: Sequence[float], *, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Rate:
    arr = _array(indicator, "rate")
    lo, hi = bootstrap_ci(arr, n_resamples=n_resamples, seed=seed, confidence=confidence)
    return Rate(float(arr.mean()), lo, hi)


def outcomes(preferences: Sequence[float], tie_margin: float = 0.0) -> np.ndarray:
    """Map preferences ``[n]`` in [0, 1] to outcomes ``[n]``: 1 win (p > 0.5 + m), 0 loss (p < 0.5 − m), 0.5 tie."""
    p = _array(preferences, "preferences")
    if np.any((p < 0) | (p > 1)):
        raise PreftuneError(f"preferences must lie in [0, 1]; preference {int(np.flatnonzero((p < 0) | (p > 1))[0])} is out of range")
    out = np.full(p.shape, 0.5)
    out[p > 0.5 + tie_margin] = 1.0
    out[p < 0.5 - tie_margin] = 0.0
    return out


def win_tie_loss(preferences: Sequence[float], *, tie_margin: float = 0.0, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Win, tie and loss rates (each with a 95 % bootstrap interval), and the win rate = mean preference.

    Returns ``{"n", "win": Rate, "tie": Rate, "loss": Rate, "win_rate": Rate}`` (Rates as dicts).
    """
    p = _array(preferences, "preferences")
    o = outcomes(p, tie_margin)
    kw = {"n_resamples": n_resamples, "seed": seed}
    return {
        "n": int(p.size),
        "win": rate_with_ci(o == 1.0, **kw).as_dict(),
        "tie": rate_with_ci(o == 0.5, **kw).as_dict(),
        "loss": rate_with_ci(o == 0.0, **kw).as_dict(),
        "win_rate": rate_with_ci(p, **kw).as_dict(),
    }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(features: np.ndarray, targets: np.ndarray, *, l2: np.ndarray | float = 0.0, max_iter: int = 100,
                 tol: float = 1e-12) -> np.ndarray:
    """Logistic regression with soft targets by Newton's method: ``features [n, d]``, ``targets [n]`` in [0, 1].

    Maximises ``Σ_i y_i log σ(x_i·w) + (1 − y_i) log(1 − σ(x_i·w)) − ½ Σ_j l2_j w_j²``; returns ``w [d]``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    reg = np.broadcast_to(np.asarray(l2, dtype=np.float64), (x.shape[1],))
    w = np.zeros(x.shape[1])
    for _ in range(max_iter):
        p = _sigmoid(x @ w)
        grad = x.T @ (y - p) - reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg) + 1e-12 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.max(np.abs(step)) < tol:
            break
    return w


def length_controlled_win_rate(preferences: Sequence[float], model_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], *, l2_length: float = 1e-3,
                               l2_bias: float = 1e-6) -> dict:
    """Length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval", eq. 2 for one model pair).

    Fits ``logit P(model ≻ baseline) = θ + φ · tanh(Δ / σ_Δ)`` with ``Δ_i = len_model_i − len_baseline_i`` and
    ``σ_Δ`` the standard deviation of Δ over the sample (no instruction-difficulty term: there is one model pair), by
    regularised maximum likelihood with the preferences as soft targets. The LC win rate is the prediction at zero
    length difference, ``σ(θ)``. All inputs ``[n]``. Returns ``{"lc_win_rate", "theta", "phi", "length_scale"}``.
    """
    p = _array(preferences, "preferences")
    lm = _array(model_lengths, "model lengths")
    lb = _array(baseline_lengths, "baseline lengths")
    if not (p.size == lm.size == lb.size):
        raise PreftuneError(f"length-controlled win rate: {p.size} preferences, {lm.size} model lengths, {lb.size} baseline lengths")
    delta = lm - lb
    scale = float(delta.std())
    squashed = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)
    x = np.stack([np.ones_like(delta), squashed], axis=1)
    theta, phi = fit_logistic(x, p, l2=np.array([l2_bias, l2_length]))
    return {"lc_win_rate": float(_sigmoid(np.array(theta))), "theta": float(theta), "phi": float(phi), "length_scale": scale}


def lc_win_rate_ci(preferences: Sequence[float], model_lengths: Sequence[float], baseline_lengths: Sequence[float], *,
                   n_resamples: int = 200, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of :func:`length_controlled_win_rate` (prompts resampled with replacement)."""
    p = _array(preferences, "preferences")
    lm, lb = np.asarray(model_lengths, float), np.asarray(baseline_lengths, float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        i = rng.integers(0, p.size, size=p.size)
        values.append(length_controlled_win_rate(p[i], lm[i], lb[i])["lc_win_rate"])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], **kwargs) -> dict:
    """``{"mean", "ci_low", "ci_high", "n"}`` of a sample (bootstrap interval)."""
    arr = _array(values, "mean")
    lo, hi = bootstrap_ci(arr, **kwargs)
    return {"mean": float(arr.mean()), "ci_low": lo, "ci_high": hi, "n": int(arr.size)}


def safe_float(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
