"""The built-in starter dataset (preftune/data/starter/pairs.jsonl): shape, counts, split and loader views."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from preftune.data.convert import load_examples
from preftune.data.formats import PreferencePair, SFTExample

STARTER = Path(__file__).resolve().parents[1] / "preftune" / "data" / "starter" / "pairs.jsonl"
FIELDS = ("id", "category", "split", "prompt", "chosen", "rejected")
CATEGORIES = ("helpful", "harmless", "benign_risky", "honest")
ID_PREFIX = {"helpful": "help", "harmless": "harm", "benign_risky": "risky", "honest": "honest"}
# (category, split) -> rows. Test = round(15%) of each category (half rounds up): 110 -> 17, 70 -> 11, 60 -> 9.
EXPECTED_COUNTS = {
    ("helpful", "train"): 93, ("helpful", "test"): 17,
    ("harmless", "train"): 59, ("harmless", "test"): 11,
    ("benign_risky", "train"): 51, ("benign_risky", "test"): 9,
    ("honest", "train"): 51, ("honest", "test"): 9,
}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    out = []
    for number, line in enumerate(STARTER.read_text(encoding="utf-8").splitlines(), start=1):
        assert line.strip(), f"blank line {number}"
        out.append(json.loads(line))
    return out


def test_file_parses_with_exact_fields(rows):
    assert len(rows) == 300 >= 290
    for row in rows:
        assert tuple(row) == FIELDS, row.get("id")
        assert all(isinstance(row[f], str) for f in FIELDS), row["id"]


def test_ids_and_prompts_unique(rows):
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["prompt"].strip().lower() for r in rows}) == len(rows)


def test_ids_follow_category_numbering(rows):
    for cat in CATEGORIES:
        ids = [r["id"] for r in rows if r["category"] == cat]
        assert ids == [f"{ID_PREFIX[cat]}-{i:03d}" for i in range(1, len(ids) + 1)]


def test_counts_per_category_and_split(rows):
    assert {r["category"] for r in rows} == set(CATEGORIES)
    assert {r["split"] for r in rows} == {"train", "test"}
    assert Counter((r["category"], r["split"]) for r in rows) == EXPECTED_COUNTS
    assert Counter(r["category"] for r in rows) == {"helpful": 110, "harmless": 70, "benign_risky": 60, "honest": 60}
    assert Counter(r["split"] for r in rows) == {"train": 254, "test": 46}


def test_split_is_the_documented_deterministic_rule(rows):
    """Per category, the round(15%) ids with the smallest sha256(id) hex digest are the test rows (README)."""
    for cat in CATEGORIES:
        ids = [r["id"] for r in rows if r["category"] == cat]
        n_test = int(len(ids) * 0.15 + 0.5)
        expected = set(sorted(ids, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:n_test])
        assert {r["id"] for r in rows if r["category"] == cat and r["split"] == "test"} == expected


def test_no_empty_field_and_chosen_differs_from_rejected(rows):
    for row in rows:
        for f in FIELDS:
            assert row[f].strip(), (row["id"], f)
            assert row[f] == row[f].strip(), (row["id"], f, "leading/trailing whitespace")
        assert row["chosen"].strip() != row["rejected"].strip(), row["id"]


def test_length_is_not_a_trivial_cue(rows):
    longer = sum(len(r["rejected"]) > len(r["chosen"]) for r in rows)
    assert longer == 118
    assert longer * 3 >= len(rows)
    # every category has some pairs where the rejected response is the longer one
    for cat in CATEGORIES:
        assert any(len(r["rejected"]) > len(r["chosen"]) for r in rows if r["category"] == cat), cat


def test_harmful_compliance_is_placeholder_only(rows):
    """The rejected compliance in 'harmless' rows stays non-actionable: specifics are [bracketed placeholders]."""
    for row in rows:
        if row["category"] == "harmless":
            assert "[" in row["rejected"] and "]" in row["rejected"], row["id"]


def test_loader_views(rows):
    """`starter`, `starter:train`, `starter:test` load as pairs; the SFT view is (prompt, chosen) of every pair."""
    everything = load_examples("starter")
    assert everything.rows == 300 and everything.skipped == []
    assert all(isinstance(p, PreferencePair) for p in everything.examples)
    first = rows[0]
    assert (everything.examples[0].prompt, everything.examples[0].chosen, everything.examples[0].rejected) == (
        first["prompt"], first["chosen"], first["rejected"])
    assert len(load_examples("starter:train").examples) == 254
    test = load_examples("starter:test")
    assert [p.prompt for p in test.examples] == [r["prompt"] for r in rows if r["split"] == "test"]
    sft = load_examples("starter:train", kind="sft").examples
    assert all(isinstance(e, SFTExample) for e in sft)
    assert [(e.prompt, e.completion) for e in sft] == [(r["prompt"], r["chosen"])
                                                       for r in rows if r["split"] == "train"]
