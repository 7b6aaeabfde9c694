"""Statistics of pairwise evaluation: bootstrap intervals, win/tie/loss, the length-controlled win rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preftune.errors import PreftuneError
from preftune.eval.stats import (bootstrap_ci, fit_logistic, length_controlled_win_rate, outcomes, rate_with_ci,
                                 win_tie_loss)


def test_bootstrap_interval_exact_values_fixed_seed():
    # default_rng(0).integers(0, 4, size=(5, 4)) draws the index rows
    #   [3,2,2,1] [1,0,0,0] [0,3,2,3] [2,2,3,2] [2,2,2,3]
    # on x = [0, 1, 1, 0.5] the resample means are 0.875, 0.25, 0.5, 0.875, 0.875; sorted [0.25, 0.5, 0.875, 0.875, 0.875].
    # 95 %: quantile 0.025 sits at position 0.025*4 = 0.1 -> 0.25 + 0.1*(0.5-0.25) = 0.275; 0.975 at 3.9 -> 0.875.
    # 50 %: positions 1 and 3 -> 0.5 and 0.875.
    x = [0.0, 1.0, 1.0, 0.5]
    rng = np.random.default_rng(0)
    assert rng.integers(0, 4, size=(5, 4)).tolist() == [[3, 2, 2, 1], [1, 0, 0, 0], [0, 3, 2, 3], [2, 2, 3, 2], [2, 2, 2, 3]]
    lo, hi = bootstrap_ci(x, n_resamples=5, seed=0)
    assert lo == pytest.approx(0.275) and hi == pytest.approx(0.875)
    assert bootstrap_ci(x, n_resamples=5, seed=0, confidence=0.5) == pytest.approx((0.5, 0.875))


def test_bootstrap_constant_sample_and_custom_statistic():
    assert bootstrap_ci([0.7] * 9, seed=3) == pytest.approx((0.7, 0.7))
    # the max of a resample of [0, 1] is 1 unless every draw is 0: the interval's top is 1.
    lo, hi = bootstrap_ci([0.0, 1.0], stat=lambda s: s.max(axis=1), n_resamples=200, seed=1)
    assert hi == 1.0 and lo == 0.0


def test_bootstrap_errors():
    with pytest.raises(PreftuneError, match="bootstrap: no values"):
        bootstrap_ci([])
    with pytest.raises(PreftuneError, match=r"bootstrap: confidence must be in \(0, 1\), got 1.5"):
        bootstrap_ci([1.0], confidence=1.5)
    with pytest.raises(PreftuneError, match="bootstrap: value 1 is not finite"):
        bootstrap_ci([1.0, float("nan")])


def test_outcomes_and_win_tie_loss():
    prefs = [1.0, 0.9, 0.5, 0.2, 0.0, 0.55]
    assert outcomes(prefs).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0, 1.0]
    # a tie margin of 0.1 turns 0.55 into a tie
    assert outcomes(prefs, tie_margin=0.1).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0, 0.5]
    res = win_tie_loss(prefs, n_resamples=50)
    assert res["n"] == 6
    assert res["win"]["value"] == pytest.approx(3 / 6)
    assert res["tie"]["value"] == pytest.approx(1 / 6)
    assert res["loss"]["value"] == pytest.approx(2 / 6)
    # win rate = mean preference = (1 + .9 + .5 + .2 + 0 + .55) / 6 = 3.15 / 6
    assert res["win_rate"]["value"] == pytest.approx(0.525)
    assert res["win_rate"]["ci_low"] <= 0.525 <= res["win_rate"]["ci_high"]
    with pytest.raises(PreftuneError, match=r"preference 1 is out of range"):
        outcomes([0.5, 1.2])


def test_rate_with_ci_all_wins():
    r = rate_with_ci([1, 1, 1, 1])
    assert (r.value, r.ci_low, r.ci_high) == (1.0, 1.0, 1.0)


def test_fit_logistic_recovers_parameters_from_soft_targets():
    # With targets equal to the model's own probabilities the likelihood's gradient is zero at the true weights.
    x = np.stack([np.ones(5), np.array([-2.0, -1.0, 0.0, 1.0, 2.0])], axis=1)
    w_true = np.array([0.3, -0.8])
    y = 1 / (1 + np.exp(-(x @ w_true)))
    assert fit_logistic(x, y) == pytest.approx(w_true, abs=1e-9)


def test_length_controlled_win_rate_on_a_constructed_case():
    # Preferences generated exactly by logit p = θ + φ·tanh(Δ/σ_Δ) with θ = 0.4, φ = 1.5; the fit recovers them and the
    # LC win rate is σ(0.4) = 1 / (1 + e^-0.4) = 0.598688.
    len_b = np.full(8, 100.0)
    delta = np.array([-60.0, -30.0, -10.0, 0.0, 10.0, 40.0, 80.0, 120.0])
    scale = delta.std()
    prefs = 1 / (1 + np.exp(-(0.4 + 1.5 * np.tanh(delta / scale))))
    res = length_controlled_win_rate(prefs, len_b + delta, len_b, l2_length=0.0, l2_bias=0.0)
    assert res["theta"] == pytest.approx(0.4, abs=1e-8)
    assert res["phi"] == pytest.approx(1.5, abs=1e-8)
    assert res["lc_win_rate"] == pytest.approx(1 / (1 + math.exp(-0.4)), abs=1e-9)
    assert res["length_scale"] == pytest.approx(scale)
    # the raw win rate is inflated by the longer answers; the LC rate removes that
    assert prefs.mean() > res["lc_win_rate"]


def test_length_controlled_win_rate_pure_length_bias():
    # Symmetric length differences ±10..±40; the longer answer wins with 0.95, the shorter with 0.05. By symmetry the
    # fit has θ = 0: LC win rate exactly 0.5 (the raw win rate is 0.5 too, but the slope φ is large and positive).
    delta = np.array([10.0, 20, 30, 40, -10, -20, -30, -40])
    prefs = np.where(delta > 0, 0.95, 0.05)
    res = length_controlled_win_rate(prefs, 100 + delta, np.full(8, 100.0))
    assert res["lc_win_rate"] == pytest.approx(0.5, abs=1e-12)
    assert res["phi"] > 3
    # Unbalanced: the model is longer on 6 of 8 prompts, raw win rate 0.725; the LC rate is pulled towards 0.5.
    delta = np.array([50.0, 40.0, 30.0, 20.0, 60.0, 70.0, -40.0, -50.0])
    prefs = np.where(delta > 0, 0.95, 0.05)
    res = length_controlled_win_rate(prefs, 100 + delta, np.full(8, 100.0))
    assert prefs.mean() == pytest.approx(0.725)
    assert 0.5 < res["lc_win_rate"] < 0.6


def test_length_controlled_errors():
    with pytest.raises(PreftuneError, match="length-controlled win rate: 2 preferences, 3 model lengths, 2 baseline lengths"):
        length_controlled_win_rate([0.5, 0.5], [1, 2, 3], [1, 2])
