"""`preftune generate`, `preftune eval` and `preftune frontier` end to end on tiny models and the project's fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.cli import main
from preftune.eval.report import SECTION_KEYS

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def length_reward(prompts, responses):
    """Reward = number of characters (a judge whose verdicts are known in advance)."""
    return [float(len(r)) for r in responses]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from preftune.models.loading import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    out = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"tiny{seed}")
        tiny_model(len(tok), seed=seed).save_pretrained(d)
        tok.save_pretrained(d)
        out.append(str(d))
    return out


def test_generate_writes_prompt_response_lines(tiny_dirs, tmp_path):
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--model", tiny_dirs[0], "--prompts", str(FIXTURES / "prompts.jsonl"), "--output", str(out),
                 "--max-new-tokens", "4", "--limit", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["What is 2 + 2?", "How do I bake bread?"]
    assert [r["reference"] for r in rows] == ["It is 4.", "Mix flour, water, salt and yeast, then bake."]
    assert all(isinstance(r["response"], str) and 1 <= r["tokens"] <= 4 and r["generator"] == tiny_dirs[0] for r in rows)


def test_eval_generations_against_reference_outputs_with_a_reward_judge(tmp_path):
    out = tmp_path / "report"
    assert main(["eval", "--generations", str(FIXTURES / "generations.jsonl"), "--baseline-generations", str(FIXTURES / "prompts.jsonl"),
                 "--judges", "[reward:tests.test_eval_cli:length_reward]", "--judge-reward-mode", "hard", "--no-bertscore",
                 "--output-dir", str(out), "--bootstrap-samples", "100"]) == 0
    data = json.loads((out / "report.json").read_text())
    judge = data["sections"]["win_rates"]["data"]["judges"][0]
    # by characters: 41 > 8 (win), 8 < 44 (loss), 12 == 12 (tie)
    assert data["sections"]["win_rates"]["data"]["preferences"]["reward:tests.test_eval_cli:length_reward"] == [1.0, 0.0, 0.5]
    assert (judge["win"]["value"], judge["tie"]["value"], judge["loss"]["value"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert judge["win_rate"]["value"] == pytest.approx(0.5)
    metrics = data["sections"]["text_metrics"]["data"]
    assert set(metrics) == {"bleu", "rouge1", "rouge2", "rougeL"}
    # no model and no --length-tokenizer: lengths in words; "It is 4, because two plus two makes four." has 9
    assert data["sections"]["lengths"]["data"] == {"model": [9, 2, 2], "baseline": [3, 8, 2], "unit": "words"}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert rows[2] == {"prompt": "Say hello.", "response": "Hello world!", "baseline": "Hello world!"}


def test_frontier_then_eval_with_every_suite(tiny_dirs, tmp_path):
    fr = tmp_path / "frontier"
    assert main(["frontier", "--checkpoints", json.dumps(tiny_dirs), "--names", "[ref, other]", "--reference", tiny_dirs[0],
                 "--prompts", str(FIXTURES / "prompts.jsonl"), "--reward", "tests.test_eval_cli:length_reward",
                 "--output-dir", str(fr), "--max-new-tokens", "4", "--samples-per-prompt", "2"]) == 0
    points = json.loads((fr / "frontier.json").read_text())["points"]
    assert [p["name"] for p in points] == ["ref", "other"]
    assert points[0]["kl"] == 0.0 and points[0]["n"] == 6  # the reference against itself: log-ratio exactly 0
    assert (fr / "frontier.png").read_bytes()[:4] == b"\x89PNG" and (fr / "report.html").exists()

    run = tmp_path / "run"
    from preftune.runs import RunDir

    rd = RunDir(run)
    for step in range(1, 4):
        rd.log(step, {"loss": 1.0 / step, "reward_mean": 0.1 * step})
    out = tmp_path / "report"
    assert main(["eval", "--model", tiny_dirs[0], "--baseline-generations", str(FIXTURES / "prompts.jsonl"),
                 "--judges", f"[reward:tests.test_eval_cli:length_reward, 'llm:{tiny_dirs[1]}']", "--max-new-tokens", "4",
                 "--harmful", str(FIXTURES / "harmful_harmbench.csv"), "--xstest", str(FIXTURES / "xstest_small.csv"),
                 "--truthfulqa", str(FIXTURES / "truthfulqa_small.csv"), "--bbq", f"[{FIXTURES / 'bbq_small.jsonl'}]",
                 "--pluralistic", str(FIXTURES / "opinions.jsonl"), "--runs", f"[{run}]", "--frontier", str(fr / "frontier.json"),
                 "--toxicity", str(FIXTURES / "toxicity_prompts.jsonl"), "--toxicity-samples", "2", "--toxicity-max-new-tokens", "2",
                 "--toxicity-scorer", "fn:tests.test_toxicity:fake_scorer", "--models", json.dumps(tiny_dirs), "--model-names", "[a, b]",
                 "--human-judgements", f"human:{FIXTURES / 'human_judgements_annotators.jsonl'}",
                 "--perplexity", "--output-dir", str(out), "--bootstrap-samples", "50", "--no-bertscore"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["not_run"] == []
    assert set(data["sections"]) == set(SECTION_KEYS)
    judges = data["sections"]["win_rates"]["data"]["judges"]
    assert [j["judge"] for j in judges] == ["reward:tests.test_eval_cli:length_reward", f"llm:{tiny_dirs[1]}"]
    assert 0.0 <= judges[1]["details"]["first_position_rate"] <= 1.0
    assert data["sections"]["over_refusal"]["data"]["safe"]["n"] == 3
    assert len(data["sections"]["harmful"]["data"]["responses"]) == 4
    assert data["sections"]["bbq"]["data"]["n"] == 6
    assert data["sections"]["truthfulqa"]["data"]["n"] == 2
    assert data["sections"]["text_metrics"]["data"]["reference_perplexity"] > 1.0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # wins, lengths, per-category, per-type, curves, frontier


def test_eval_errors(tmp_path, capsys):
    assert main(["eval", "--model", "x", "--generations", "y", "--output-dir", str(tmp_path)]) == 2
    assert "give either --model (to generate) or --generations (a file of responses), not both" in capsys.readouterr().err
    assert main(["eval", "--generations", str(FIXTURES / "generations.jsonl"), "--xstest", "x.csv", "--output-dir", str(tmp_path)]) == 2
    assert "the suites xstest need --model (they generate or score with it)" in capsys.readouterr().err
    assert main(["eval", "--generations", str(FIXTURES / "generations.jsonl"), "--baseline-generations",
                 str(FIXTURES / "truthfulqa_small.csv"), "--output-dir", str(tmp_path)]) == 2
    assert "no prompt field: expected one of prompt, instruction, question" in capsys.readouterr().err
    assert main(["eval", "--generations", str(FIXTURES / "generations.jsonl"), "--baseline-generations", str(FIXTURES / "prompts.jsonl"),
                 "--judges", "[oracle]", "--output-dir", str(tmp_path)]) == 2
    assert "unknown judge 'oracle'" in capsys.readouterr().err
    assert main(["frontier", "--checkpoints", "[a, b]", "--names", "[x]", "--prompts", "p", "--reward", "r:f",
                 "--output-dir", str(tmp_path)]) == 2
    assert "--names has 1 labels for 2 checkpoints" in capsys.readouterr().err


def test_checkpoint_labels():
    from preftune.commands.evaluate import _checkpoint_name

    assert _checkpoint_name("/runs/dpo/final") == "dpo"
    assert _checkpoint_name("/runs/dpo/checkpoints/step-8/model") == "step-8"
    assert _checkpoint_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
