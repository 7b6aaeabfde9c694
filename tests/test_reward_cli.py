"""`preftune reward`, `reward-eval` and `score` end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.cli import main

DATA = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def trained(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    code = main(["reward", "--model", str(tiny_lm), "--data", str(DATA / "pairs.jsonl"), "--output-dir", str(out),
                 "--max-steps", "2", "--batch-size", "2", "--learning-rate", "1e-3"])
    assert code == 0
    return out


def test_reward_training_writes_a_run_folder(trained):
    assert (trained / "config.yaml").exists() and (trained / "final" / "preftune_reward.json").exists()
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"} <= set(rows[0])


def test_reward_eval_reports_accuracy_calibration_and_a_histogram(trained, tmp_path, capsys):
    assert main(["reward-eval", "--model", str(trained / "final"), "--data", str(DATA / "pairs.jsonl"), "--json",
                 "--output-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 3 and 0.0 <= report["accuracy"] <= 1.0 and "ece" in report
    assert (tmp_path / "reward_histogram.png").stat().st_size > 0


def test_score_writes_one_line_per_prompt_response(trained, tmp_path):
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(trained / "final"), "--data", str(DATA / "pairs.jsonl"), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6  # 3 pairs → chosen and rejected of each
    assert all(isinstance(line["reward"], float) for line in lines)
    assert lines[0]["response"] == "It is 4." and lines[1]["response"] == "It is 5."


def test_misspelt_option_is_named(capsys):
    assert main(["reward", "--lerning-rate", "1"]) == 2
    assert "unknown option 'lerning_rate'; did you mean 'learning_rate'?" in capsys.readouterr().err
