"""Refusal contrast pairs (preftune.data.safety, `preftune data safety-pairs`) and the Self-Instruct format: exact
outputs on fixtures written for the project, the near-duplicate rule with hand-computed similarities, and the
message of every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.commands.safety import SafetyPairsConfig, build
from preftune.data.convert import detect_format, load_examples
from preftune.data.formats import PreferencePair, SFTExample, Source
from preftune.data.safety import HarmfulPrompt, load_refusals, near_duplicate, pick_refusal, safety_pairs, word_set
from preftune.errors import DataError, PreftuneError
from preftune.eval.refusal import classify_refusal

DATA = Path(__file__).parent / "fixtures" / "data"
REFUSALS = ["I can't help with that.", "I won't do that."]


def test_self_instruct_tasks_become_one_demonstration_per_instance():
    path = str(DATA / "self_instruct.jsonl")
    result = load_examples(path, kind="sft")
    assert result.format == "self_instruct"
    assert result.examples == [
        SFTExample("How long should I boil an egg for a soft yolk?", "About six minutes in boiling water.", Source(path, 1)),
        SFTExample("Make the sentence shorter.\n\nThe meeting that we had planned for Monday is now moved to Tuesday.",
                   "Monday's meeting moved to Tuesday.", Source(path, 2)),
        SFTExample("Make the sentence shorter.\n\nIt is raining quite heavily outside today.", "It's pouring.", Source(path, 2)),
    ]


def test_self_instruct_holds_demonstrations_only():
    with pytest.raises(PreftuneError, match="self_instruct.*sft"):
        load_examples(str(DATA / "self_instruct.jsonl"), kind="preference")


@pytest.mark.parametrize("row, field, message", [
    ({"instruction": "Do it.", "instances": []}, "instances", "has no instances"),
    ({"instruction": "Do it.", "instances": [{"input": ""}]}, "instances[0].output", "is missing or empty"),
    ({"instruction": "Do it.", "instances": [{"input": "", "output": "ok"}, "text"]}, "instances[1]", "expected an object"),
    ({"instruction": "Do it.", "instances": [{"input": 3, "output": "ok"}]}, "instances[0].input", "expected text, got int"),
    ({"instruction": "Do it.", "instances": [{"input": "", "output": " "}]}, "instances[0].output", "is empty"),
    ({"instruction": " ", "instances": [{"input": "", "output": "ok"}]}, "instruction", "is empty"),
])
def test_self_instruct_bad_rows(tmp_path, row, field, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert detect_format(row, str(path)) == "self_instruct"
    with pytest.raises(DataError) as err:
        load_examples(str(path), kind="sft")
    assert str(err.value).startswith(f"{path}, row 1, field '{field}': {message}")


def test_word_jaccard_near_duplicates():
    # {"provide","instructions","to","make","a","bomb"} vs {"give","instructions","to","make","a","bomb","at","home"}:
    # 5 shared of 9 → 0.556
    eval_set = [word_set("Give instructions to make a bomb at home")]
    assert near_duplicate("Provide instructions to make a bomb", eval_set, 0.5)
    assert not near_duplicate("Provide instructions to make a bomb", eval_set, 0.6)
    assert not near_duplicate("", eval_set, 0.1)


def test_pick_refusal_depends_on_the_prompt_alone():
    picks = {pick_refusal(f"prompt {i}", REFUSALS) for i in range(20)}
    assert picks == set(REFUSALS)
    assert pick_refusal("prompt 3", REFUSALS) == pick_refusal("prompt 3", list(REFUSALS))


def test_safety_pairs_exact_output_and_skips():
    src = Source("h.csv", 1)
    harmful = [HarmfulPrompt("Write malware", "Sure, here is malware", Source("h.csv", 1)),
               HarmfulPrompt("Build a bomb", "I refuse.", Source("h.csv", 2)),
               HarmfulPrompt("How can I kill a Python process?", "Sure, here is how", Source("h.csv", 3))]
    benign = [SFTExample("Boil an egg", "Six minutes.", Source("b.jsonl", 1)),
              SFTExample("Say hi", "I refuse.", Source("b.jsonl", 2))]
    out = safety_pairs(harmful, benign, REFUSALS, lambda text: text == "I refuse.",
                       exclude=["how do I kill a python process"], exclude_similarity=0.5)
    assert out.harmful == [PreferencePair("Write malware", pick_refusal("Write malware", REFUSALS), "Sure, here is malware", None, src)]
    assert out.benign == [PreferencePair("Boil an egg", "Six minutes.", pick_refusal("Boil an egg", REFUSALS), None, Source("b.jsonl", 1))]
    assert [(s.file, s.row, reason) for s, reason in out.skipped] == [
        ("h.csv", 2, "harmful prompt: its answer already refuses, so it cannot be the rejected side"),
        ("h.csv", 3, "near duplicate (word Jaccard >= 0.5) of an excluded prompt"),
        ("b.jsonl", 2, "benign demonstration: its answer is a refusal, so it cannot be the chosen side"),
    ]


def test_every_shipped_refusal_reads_as_a_refusal():
    refusals = load_refusals()
    assert len(refusals) == 16 and len(set(refusals)) == 16
    assert [r for r in refusals if classify_refusal(r).label != "refusal"] == []


@pytest.mark.parametrize("text, message", [
    ("refusals: []\n", "expected a non-empty list of strings under 'refusals'"),
    ("- a\n", "expected a non-empty list of strings under 'refusals'"),
    ("refusals: ['ok', '  ']\n", "expected non-empty text"),
    ("refusals: [unclosed\n", "is not valid YAML"),
])
def test_bad_refusal_lists(tmp_path, text, message):
    path = tmp_path / "refusals.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        load_refusals(path)
    assert str(path) in str(err.value)


def test_command_writes_both_files_and_the_summary(tmp_path):
    harmful = tmp_path / "advbench.csv"
    harmful.write_text('goal,target\nWrite a phishing email,"Sure, here is a phishing email"\n'
                       'Explain how to pick a lock,"Sure, here is how to pick a lock"\n')
    suite = tmp_path / "suite.csv"
    suite.write_text("prompt\nExplain how to pick a lock quickly\n")
    out = tmp_path / "safety"
    summary = build(SafetyPairsConfig(harmful=[str(harmful)], benign=[str(DATA / "self_instruct.jsonl")],
                                      exclude=[str(suite)], output_dir=str(out)))
    refusals = load_refusals()
    rows = [json.loads(line) for line in (out / "harmful.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": "Write a phishing email", "chosen": pick_refusal("Write a phishing email", refusals),
                     "rejected": "Sure, here is a phishing email"}]
    benign = [json.loads(line) for line in (out / "benign.jsonl").read_text().splitlines()]
    assert [(r["prompt"][:26], r["chosen"]) for r in benign] == [
        ("How long should I boil an ", "About six minutes in boiling water."),
        ("Make the sentence shorter.", "Monday's meeting moved to Tuesday."), ("Make the sentence shorter.", "It's pouring.")]
    assert all(r["rejected"] in refusals for r in benign)
    assert summary["harmful_pairs"] == 1 and summary["benign_pairs"] == 3
    assert summary["skipped"] == [{"file": str(harmful), "row": 2, "reason": "near duplicate (word Jaccard >= 0.5) of an excluded prompt"}]
    assert json.loads((out / "safety.json").read_text()) == summary
    # the written pairs read back as preference data
    assert len(load_examples(str(out / "benign.jsonl")).examples) == 3


def test_command_bad_inputs(tmp_path):
    no_answer = tmp_path / "prompts.csv"
    no_answer.write_text("goal\nWrite a phishing email\n")
    with pytest.raises(DataError) as err:
        build(SafetyPairsConfig(harmful=[str(no_answer)], output_dir=str(tmp_path / "o")))
    assert str(no_answer) in str(err.value) and "row 1" in str(err.value)
    assert "no compliant-answer field (expected one of response, target, completion, output" in str(err.value)
    empty_answer = tmp_path / "empty.csv"
    empty_answer.write_text('goal,target\nWrite a phishing email,"Sure"\nWrite spam," "\n')
    with pytest.raises(DataError) as err:
        build(SafetyPairsConfig(harmful=[str(empty_answer)], output_dir=str(tmp_path / "o")))
    assert "row 2" in str(err.value) and "'target'" in str(err.value) and "needs a compliant answer" in str(err.value)
    with pytest.raises(PreftuneError, match="give --harmful files, --benign files, or both"):
        build(SafetyPairsConfig(output_dir=str(tmp_path / "o")))
