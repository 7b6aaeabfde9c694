"""Judge–human agreement (AlpacaFarm's leave-one-out), position and length bias, against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.errors import DataError
from preftune.eval.agreement import (
    human_statistics,
    judge_agreement,
    read_human_pairs,
    single_order_probabilities,
)
from preftune.eval.judges import RewardJudge

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def longer_is_better(prompts, responses):
    return [float(len(r.split())) for r in responses]


def test_pairs_are_grouped_and_orientation_flipped():
    pairs = read_human_pairs(FIXTURES / "human_judgements_annotators.jsonl")
    assert [(p.prompt, p.votes, p.annotators, p.shown_first) for p in pairs] == [
        ("p1", [1.0, 1.0, 0.0], ["u1", "u2", "u3"], [True, True, True]),
        ("p2", [1.0, 0.0, 1.0], ["u1", "u2", "u3"], [True, True, False]),  # u3 saw them swapped and chose the long one
        ("p3", [0.5], ["u1"], [True]),
    ]


def test_people_hand_computed():
    s = human_statistics(read_human_pairs(FIXTURES / "human_judgements_annotators.jsonl"))
    # leave-one-out over p1 (a, a, b) and p2 (a, b, a):
    #   p1: hold u1 -> others {a, b} tie for the mode: 1/2; u2 likewise 1/2; u3 (b) vs mode a: 0      -> 1
    #   p2: hold u1 (a) -> others {b, a}: 1/2; u2 (b) vs mode a: 0; u3 (a) -> others {a, b}: 1/2        -> 1
    assert s["loo_agreement"] == pytest.approx(2 / 6) and s["loo_n"] == 6
    # decisive votes 6 (the tie is not): the slot shown first won for u1, u2 on p1 and u1 on p2: 3 of 6
    assert s["first_slot_wins"] == pytest.approx(0.5)
    # the longer answer won: p1 (b longer) once, p2 (a longer) twice: 3 of 6
    assert s["longer_wins"] == pytest.approx(0.5)
    assert (s["pairs"], s["judgements"], s["pairs_with_several"], s["annotators"]) == (3, 7, 2, 3)


def test_judge_hand_computed():
    pairs = read_human_pairs(FIXTURES / "human_judgements_annotators.jsonl")
    judge = RewardJudge("tests.test_agreement:longer_is_better", mode="hard")
    result = judge.compare([p.prompt for p in pairs], [p.response_a for p in pairs], [p.response_b for p in pairs])
    assert result.preferences == [0.0, 1.0, 0.0]  # the longer answer: b, a, b
    j = judge_agreement(result.preferences, pairs, n_resamples=100)
    # with the people's mode: p1 mode a (judge b): 0; p2 mode a: 1; p3 mode tie (judge b): 0
    assert j["agreement"]["value"] == pytest.approx(1 / 3)
    # leave-one-out: p1 -> 1/2, 1/2, 0 (judge b vs modes {a,b}, {a,b}, {a}); p2 -> 1/2, 1, 1/2: (1 + 2) / 6
    assert j["loo_agreement"] == pytest.approx(0.5)
    assert j["longer_wins"] == 1.0 and j["first_slot_wins"] is None and j["ties"] == 0


def test_position_bias_of_a_judge_that_always_picks_the_first_slot():
    pairs = read_human_pairs(FIXTURES / "human_judgements_annotators.jsonl")
    details = {"p_a_first": [0.9, 0.8, 0.7], "p_a_swapped": [0.6, 0.5, 0.9]}  # 0.5 is not decisive
    probs = single_order_probabilities(details)
    j = judge_agreement([0.65, 0.65, 0.4], pairs, single_order=probs, n_resamples=10)
    assert j["first_slot_wins"] == 1.0
    assert single_order_probabilities({"rewards_a": []}) is None


def test_bad_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [{"prompt": "p", "response_a": "x", "response_b": "y", "preference": "a", "annotator": "u1"},
            {"prompt": "p", "response_a": "y", "response_b": "x", "preference": "b", "annotator": "u1"}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl, row 2, field 'annotator': annotator 'u1' already judged this pair"):
        read_human_pairs(bad)
    bad.write_text(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y", "preference": "maybe"}) + "\n")
    with pytest.raises(DataError, match=r"row 1, field 'preference': preference must be 'a', 'b', 'tie' or a number in \[0, 1\], got 'maybe'"):
        read_human_pairs(bad)
    bad.write_text(json.dumps({"prompt": "p", "response_a": "x", "preference": "a"}) + "\n")
    with pytest.raises(DataError, match=r"row 1, field 'response_b': missing field"):
        read_human_pairs(bad)


def test_eval_judge_agreement_section(tmp_path):
    from preftune.cli import main

    out = tmp_path / "report"
    assert main(["eval", "--human-judgements", f"human:{FIXTURES / 'human_judgements_annotators.jsonl'}", "--judges",
                 "[reward:tests.test_agreement:longer_is_better]", "--judge-reward-mode", "hard", "--bootstrap-samples", "50",
                 "--output-dir", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())["sections"]["judge_agreement"]["data"]
    assert data["humans"]["loo_agreement"] == pytest.approx(1 / 3)
    judge = data["judges"]["reward:tests.test_agreement:longer_is_better"]
    assert judge["agreement"]["value"] == pytest.approx(1 / 3) and judge["loo_agreement"] == pytest.approx(0.5)
    assert "Judge–human agreement" in (out / "report.html").read_text()
