"""Leaderboard: Bradley–Terry ratings on the Elo scale — hand-computed on two models, known strengths recovered from
simulated battles within the bootstrap interval, and `preftune eval --models` end to end on files of responses."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from preftune.errors import PreftuneError
from preftune.eval.leaderboard import (
    Battles,
    fit_bradley_terry,
    leaderboard,
    round_robin,
)


def simulate(ratings, per_pair, seed=0) -> Battles:
    """Win / loss battles from known ratings: P(a ≻ b) = 1 / (1 + 10^((r_b − r_a)/400))."""
    rng = np.random.default_rng(seed)
    a, b, pref = [], [], []
    for i, j in itertools.combinations(range(len(ratings)), 2):
        p = 1.0 / (1.0 + 10 ** ((ratings[j] - ratings[i]) / 400.0))
        a += [i] * per_pair
        b += [j] * per_pair
        pref += (rng.random(per_pair) < p).astype(float).tolist()
    return Battles([f"m{i}" for i in range(len(ratings))], a, b, pref)


def test_two_models_hand_computed():
    # A beats B in 3 of 4 battles: the MLE odds are 3:1, so r_A − r_B = 400 log10(3) = 190.85, centred on 1000
    battles = Battles(["A", "B"], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0])
    r = fit_bradley_terry(battles)
    assert r == pytest.approx([1000 + 200 * math.log10(3), 1000 - 200 * math.log10(3)], abs=1e-3)
    # the same from soft preferences 0.75 each, and from B's side (b = A with 1 − p)
    assert fit_bradley_terry(Battles(["A", "B"], [0, 1], [1, 0], [0.75, 0.25])) == pytest.approx(r, abs=1e-3)
    anchored = fit_bradley_terry(battles, anchor=1200, anchor_model="B")
    assert anchored == pytest.approx([1200 + 400 * math.log10(3), 1200], abs=1e-3)


def test_recovers_known_strengths_within_the_bootstrap_interval():
    true = np.array([1250.0, 1100.0, 950.0, 700.0])  # mean 1000: the ratings' anchor
    board = leaderboard(simulate(true, 300, seed=1), n_resamples=300, seed=0)
    by_name = {r["model"]: r for r in board["ratings"]}
    for i, t in enumerate(true):
        r = by_name[f"m{i}"]
        assert r["ci_low"] <= t <= r["ci_high"], (i, t, r)
        assert abs(r["rating"] - t) < 60
    assert [r["model"] for r in board["ratings"]] == ["m0", "m1", "m2", "m3"]
    assert board["n_battles"] == 6 * 300 and by_name["m0"]["battles"] == 900
    # the win matrix is antisymmetric: P(m0 ≻ m1) + P(m1 ≻ m0) = 1
    assert board["win_matrix"]["m0"]["m1"] + board["win_matrix"]["m1"]["m0"] == pytest.approx(1.0)


def test_battle_errors():
    with pytest.raises(PreftuneError, match=r"battles: every preference must be a number in \[0, 1\]"):
        Battles(["A", "B"], [0], [1], [1.5])
    with pytest.raises(PreftuneError, match=r"battles: a model cannot battle itself"):
        Battles(["A", "B"], [0], [0], [1.0])
    with pytest.raises(PreftuneError, match=r"model indices must lie in \[0, 2\)"):
        Battles(["A", "B"], [0], [2], [1.0])
    with pytest.raises(PreftuneError, match=r"the anchor model 'C' is not one of A, B"):
        fit_bradley_terry(Battles(["A", "B"], [0], [1], [1.0]), anchor_model="C")


def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def test_round_robin_with_a_reward_judge():
    from preftune.eval.judges import RewardJudge

    judge = RewardJudge("tests.test_leaderboard:length_reward", mode="hard")
    battles = round_robin(judge, ["p1", "p2"], {"A": ["aaa", "a"], "B": ["bb", "bb"], "C": ["c", "cccc"]})
    assert battles.a.tolist() == [0, 0, 0, 0, 1, 1] and battles.b.tolist() == [1, 1, 2, 2, 2, 2]
    assert battles.preference.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    with pytest.raises(PreftuneError, match=r"a leaderboard needs at least two models, got 1"):
        round_robin(judge, ["p"], {"A": ["x"]})


def test_eval_models_leaderboard_from_files(tmp_path):
    from scipy.optimize import minimize

    from preftune.cli import main

    prompts = ["p1", "p2", "p3"]
    lengths = {"A": [3, 6, 9], "B": [4, 5, 8], "C": [1, 7, 2]}
    files = []
    for name, ls in lengths.items():
        f = tmp_path / f"{name}.jsonl"
        f.write_text("".join(json.dumps({"prompt": p, "response": "x" * n}) + "\n" for p, n in zip(prompts, ls)))
        files.append(str(f))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "report"
    assert main(["eval", "--models", json.dumps(files), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--judges", "[reward:tests.test_leaderboard:length_reward]", "--judge-reward-mode", "hard",
                 "--bootstrap-samples", "50", "--output-dir", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())["sections"]["leaderboard"]["data"]
    board = data["judges"]["reward:tests.test_leaderboard:length_reward"]
    # by length: A beats B on 2 of 3 prompts (6>5, 9>8), A beats C on 2 (3>1, 9>2), B beats C on 2 (4>1, 8>2)
    assert board["win_matrix"]["A"] == {"B": pytest.approx(2 / 3), "C": pytest.approx(2 / 3)}
    assert board["win_matrix"]["B"]["C"] == pytest.approx(2 / 3)

    # an independent maximum-likelihood fit of the same battles
    def nll(beta):
        out = 0.0
        for (i, j) in ((0, 1), (0, 2), (1, 2)):
            out -= 2 * math.log(1 / (1 + math.exp(beta[j] - beta[i]))) + math.log(1 / (1 + math.exp(beta[i] - beta[j])))
        return out

    beta = minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    want = 400 / math.log(10) * (beta - beta.mean()) + 1000
    got = {r["model"]: r["rating"] for r in board["ratings"]}
    assert [got["A"], got["B"], got["C"]] == pytest.approx(want.tolist(), abs=0.05)
    assert "Leaderboard" in (out / "report.html").read_text()
