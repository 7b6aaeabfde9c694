"""examples/personalise_simulated.py end to end on a tiny model: the candidates, the simulated annotator's answers
through the feedback store, the exported pairs (exactly which answer was preferred), DPO on the database and the
win rate under the same preference."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "personalise_simulated.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("personalise_simulated", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_prefers_shorter_answers_in_screen_terms(example):
    assert example.prefers_shorter(["ab", "abc"]) == {"choice": "left"}
    assert example.prefers_shorter(["abcd", "abc"]) == {"choice": "right"}
    assert example.prefers_shorter(["abc", "xyz"]) == {"choice": "tie"}
    assert example.shorter_reward(["p", "q"], ["abc", ""]) == [-3.0, -0.0]


def test_the_loop_on_a_tiny_model(example, tiny_lm, tmp_path):
    settings = example.Settings(model=str(tiny_lm), prompts=3, num_samples=3, candidate_tokens=8, max_steps=1,
                                batch_size=2, eval_limit=3, eval_tokens=6, bootstrap_samples=20)
    summary = example.personalise(settings, tmp_path)

    # the candidates: 3 prompts x 3 samples, what `preftune generate --num-samples 3` writes
    cands = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 9 and [c["sample"] for c in cands] == [0, 1, 2] * 3
    # what the annotator must have preferred, worked out from the candidates alone: every pair of a prompt's distinct
    # non-blank answers, the shorter one chosen; equal lengths are ties (no pair)
    expected, ties, items = [], 0, 0
    for i in range(3):
        distinct = list(dict.fromkeys(c["response"] for c in cands[3 * i:3 * i + 3] if c["response"].strip()))
        for a in range(len(distinct)):
            for b in range(a + 1, len(distinct)):
                x, y = distinct[a], distinct[b]
                items += 1
                if len(x) == len(y):
                    ties += 1
                else:
                    short, long_ = (x, y) if len(x) < len(y) else (y, x)
                    expected.append((cands[3 * i]["prompt"], short, long_))
    assert items > 0 and summary["answered"] == items
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert sorted((p["prompt"], p["chosen"], p["rejected"]) for p in pairs) == sorted(expected)
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    assert summary["pairs"] == len(expected)
    assert summary["dropped"] == ({"tie (not a preference pair)": ties} if ties else {})

    # DPO trained on the database and saved a merged model; the eval judged it on 3 new prompts
    assert (tmp_path / "dpo" / "final" / "config.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and summary["eval"]["n"] == 3
    # the judge applies the annotator's preference: 1 when the tuned answer is shorter, 0.5 on equal length
    prefs = [1.0 if len(r["response"]) < len(r["baseline"]) else 0.5 if len(r["response"]) == len(r["baseline"]) else 0.0
             for r in rows]
    assert summary["eval"]["win_rate"]["value"] == pytest.approx(sum(prefs) / 3)
    assert summary["eval"]["win"] == pytest.approx(prefs.count(1.0) / 3)
    assert summary["eval"]["mean_chars_tuned"] == pytest.approx(sum(len(r["response"]) for r in rows) / 3)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_the_command_line_prints_the_win_rate(example, tiny_lm, tmp_path, capsys):
    assert example.main(["--out", str(tmp_path), "--model", str(tiny_lm), "--prompts", "2", "--num-samples", "2",
                         "--candidate-tokens", "6", "--max-steps", "1", "--batch-size", "1", "--eval-limit", "2",
                         "--eval-tokens", "4", "--bootstrap-samples", "10"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    wr = summary["eval"]["win_rate"]
    assert f"win rate {wr['value']:.3f} (95% interval {wr['ci_low']:.3f}-{wr['ci_high']:.3f}; " in out
    assert summary["settings"]["eval_limit"] == 2 and summary["settings"]["learning_rate"] == 5e-4
