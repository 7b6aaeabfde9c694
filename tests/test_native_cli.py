"""The native formats through the training commands, on a tiny model: `preftune sft` on OpenAssistant's best-ranked
paths, `preftune reward` on its rankings (pairs and Plackett–Luce), and a rule model on JailbreakBench rows."""

from __future__ import annotations

import json
from pathlib import Path


from preftune.cli import main

DATA = Path(__file__).parent / "fixtures" / "data"


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sft_trains_on_the_best_ranked_paths(tiny_lm, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(tiny_lm), "--data", str(DATA / "oasst_messages.jsonl"), "--output-dir", str(out),
                 "--num-epochs", "1", "--batch-size", "1", "--learning-rate", "1e-3"]) == 0
    # 3 demonstrations (France → Paris., Italy → Rome., Say hi → Hi!) at one a step: 3 steps in an epoch
    assert [r["step"] for r in _metrics(out) if "loss" in r] == [1, 2, 3]
    assert "skipped 5 of 15 rows" in capsys.readouterr().err
    assert (out / "final").exists()


def test_reward_on_oasst_pairs_and_plackett_luce(tiny_lm, tmp_path):
    for objective, steps in (("bradley_terry", [1, 2, 3]), ("plackett_luce", [1, 2, 3])):
        out = tmp_path / objective
        # pairs: 5, at 2 a step → 3 steps; rankings: 3 (of 3, 2 and 2 replies), at 1 a step → 3 steps
        assert main(["reward", "--model", str(tiny_lm), "--data", str(DATA / "oasst_trees.jsonl"), "--objective", objective,
                     "--output-dir", str(out), "--batch-size", "2" if objective == "bradley_terry" else "1",
                     "--learning-rate", "1e-3", "--no-normalize"]) == 0
        assert [r["step"] for r in _metrics(out) if "loss" in r] == steps


def test_reward_held_out_by_tree(tiny_lm, tmp_path, capsys):
    """--eval-fraction holds out whole trees: every example's source row is its tree's root."""
    out = tmp_path / "rm"
    assert main(["reward", "--model", str(tiny_lm), "--data", str(DATA / "oasst_messages.jsonl"), "--output-dir", str(out),
                 "--eval-fraction", "0.5", "--batch-size", "2", "--no-normalize"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # two trees: 4 pairs (France, Italy) and 1 (Say hi); one tree trains, the other is evaluated
    assert (summary["train_examples"], summary["eval"]["pairs"]) in ((4, 1), (1, 4))


def test_rule_model_on_jailbreakbench_rows(tiny_lm, tmp_path, capsys):
    out = tmp_path / "rule"
    assert main(["reward", "--model", str(tiny_lm), "--data", str(DATA / "jailbreakbench.json"), "--objective", "rule",
                 "--output-dir", str(out), "--batch-size", "2", "--learning-rate", "1e-3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objective"] == "rule" and summary["train_examples"] == 2 and summary["steps"] == 1
    meta = json.loads((out / "final" / "preftune_reward.json").read_text())
    assert meta["kind"] == "rule_model"
    assert main(["reward-eval", "--model", str(out / "final"), "--data", str(DATA / "jailbreakbench.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 2


def test_rule_model_on_redteam_transcripts(tiny_lm, tmp_path, capsys):
    """`--objective auto` picks the rule objective for red-team transcripts; reward-eval takes the rating threshold."""
    out = tmp_path / "rule"
    data = str(DATA / "red_team_attempts.jsonl")
    assert main(["reward", "--model", str(tiny_lm), "--data", data, "--output-dir", str(out), "--batch-size", "3",
                 "--learning-rate", "1e-3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["objective"], summary["train_examples"], summary["steps"]) == ("rule", 3, 1)
    for threshold, followed in (("3", 1), ("3.5", 2)):
        assert main(["reward-eval", "--model", str(out / "final"), "--data", data, "--json",
                     "--redteam-success-rating", threshold]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["examples"], report["followed"]) == (3, followed)
