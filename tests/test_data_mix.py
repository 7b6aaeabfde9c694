"""`preftune data mix`: exact rows written, a held-out part fixed by content (not position), per-source files."""

from __future__ import annotations

import json

import pytest

from preftune.data.convert import load_examples
from preftune.data.mix import MixConfig, held_out, mix, source_name
from preftune.errors import PreftuneError


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mix_writes_rows_the_trainers_read_back(tmp_path):
    summary = mix(MixConfig(inputs=["tests/fixtures/data/pairs.jsonl", "starter:test:harmless"], test_fraction=0.3,
                            output_dir=str(tmp_path)))
    assert [(s["name"], s["train"], s["test"]) for s in summary["sources"]] == [("pairs", 3, 0), ("starter-test-harmless", 8, 3)]
    train, test = _rows(tmp_path / "train.jsonl"), _rows(tmp_path / "test.jsonl")
    assert len(train) == 11 and _rows(tmp_path / "test-starter-test-harmless.jsonl") == test
    first = next(r for r in train if r["source"] == "pairs" and r["prompt"] == "What is 2 + 2?")
    assert first == {"prompt": "What is 2 + 2?", "chosen": "It is 4.", "rejected": "It is 5.", "source": "pairs"}
    margin = next(r for r in train if r["source"] == "pairs" and r.get("margin") is not None)
    assert margin["prompt"] == [{"role": "user", "content": "Hello"}] and margin["margin"] == 2
    back = load_examples(tmp_path / "train.jsonl")  # read back as preference pairs, nothing lost
    assert back.format == "preference" and len(back.examples) == 11 and back.skipped == []
    # the held-out part is decided by each example's content: the same examples whatever else is mixed in
    alone = mix(MixConfig(inputs=["starter:test:harmless"], test_fraction=0.3, output_dir=str(tmp_path / "alone")))
    assert alone["test"] == 3 and _rows(tmp_path / "alone" / "test.jsonl") == test
    # and a pair's SFT view (prompt, chosen) is held out with it: SFT never trains on a held-out pair's chosen side
    sft = mix(MixConfig(inputs=["starter:test:harmless"], kind="sft", test_fraction=0.3, output_dir=str(tmp_path / "sft")))
    assert [(r["prompt"], r["completion"]) for r in _rows(tmp_path / "sft" / "test.jsonl")] == [(r["prompt"], r["chosen"]) for r in test]
    assert sft["test"] == 3
    assert all(held_out(r, 0, 0.3) for r in test) and not any(held_out(r, 0, 0.3) for r in train)


def test_sft_kind_limits_and_errors(tmp_path):
    summary = mix(MixConfig(inputs=["starter:train:harmless", "starter:train:helpful"], kind="sft", limits=[5, None],
                            output_dir=str(tmp_path)))
    assert [(s["train"], s["examples"]) for s in summary["sources"]] == [(5, 59), (93, 93)]
    rows = _rows(tmp_path / "train.jsonl")
    assert set(rows[0]) == {"prompt", "completion", "source"}
    assert not (tmp_path / "test.jsonl").exists()
    with pytest.raises(PreftuneError, match=r"--limits has 1 entries for 2 inputs \(one each, null for all\)"):
        mix(MixConfig(inputs=["starter:train", "starter:test"], limits=[3], output_dir=str(tmp_path)))
    with pytest.raises(PreftuneError, match=r"two inputs have the same name \(starter-test, starter-test\)"):
        mix(MixConfig(inputs=["starter:test", "starter:test"], output_dir=str(tmp_path)))
    assert source_name("../shared/data/hh_harmless/pairs.jsonl.gz") == "pairs" and source_name("starter") == "starter"


def test_every_pair_of_one_prompt_lands_on_one_side(tmp_path):
    # an OpenAssistant ranking gives several pairs per prompt: held out together, never split across train and test
    for seed in range(4):
        mix(MixConfig(inputs=["tests/fixtures/data/oasst_trees.jsonl"], test_fraction=0.5, seed=seed, output_dir=str(tmp_path)))
        train = {json.dumps(r["prompt"]) for r in _rows(tmp_path / "train.jsonl")}
        test = {json.dumps(r["prompt"]) for r in _rows(tmp_path / "test.jsonl")} if (tmp_path / "test.jsonl").exists() else set()
        assert train and not train & test
        (tmp_path / "test.jsonl").unlink(missing_ok=True)
