"""Every format conversion with its exact expected output (fixtures in tests/fixtures/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from preftune.data.convert import load_examples
from preftune.data.fields import parse_hh_dialogue
from preftune.errors import PreftuneError
from preftune.data.formats import (
    PreferencePair,
    Ranking,
    RuleExample,
    SFTExample,
    Source,
    UnpairedExample,
    correction_pairs,
)

DATA = Path(__file__).parent / "fixtures" / "data"


def test_preference_plain_conversational_and_implicit_prompt():
    result = load_examples(DATA / "pairs.jsonl", "preference")
    assert result.rows == 3 and result.skipped == []
    assert result.examples == [
        PreferencePair("What is 2 + 2?", "It is 4.", "It is 5."),
        PreferencePair([{"role": "user", "content": "Hello"}], "Hi! How can I help?", "Go away.", margin=2.0),
        PreferencePair([{"role": "user", "content": "Name a colour."}], "Blue.", "Seven."),
    ]
    assert result.examples[1].source == Source(str(DATA / "pairs.jsonl"), 2)


def test_auto_detects_preference():
    assert load_examples(DATA / "pairs.jsonl").format == "preference"


def test_preference_to_sft_and_unpaired():
    sft = load_examples(DATA / "pairs.jsonl", kind="sft").examples
    assert sft[0] == SFTExample("What is 2 + 2?", "It is 4.")
    unpaired = load_examples(DATA / "pairs.jsonl", kind="unpaired").examples
    assert unpaired[:2] == [UnpairedExample("What is 2 + 2?", "It is 4.", True), UnpairedExample("What is 2 + 2?", "It is 5.", False)]
    assert len(unpaired) == 6


def test_ranking_expands_to_all_pairs_in_order():
    pairs = load_examples(DATA / "ranking.jsonl").examples
    assert pairs == [
        PreferencePair("Rank these", "best", "middle"),
        PreferencePair("Rank these", "best", "worst"),
        PreferencePair("Rank these", "middle", "worst"),
    ]
    rankings = load_examples(DATA / "ranking.jsonl", kind="ranking").examples
    assert rankings == [Ranking("Rank these", ("best", "middle", "worst"))]


def test_ranking_of_k_gives_k_choose_2_pairs():
    ranking = Ranking("p", tuple("abcde"))
    assert len(ranking.to_pairs()) == 10  # 5·4/2


def test_corrections_give_three_pairs():
    pairs = load_examples(DATA / "corrections.jsonl", "correction").examples
    p = "Capital of Australia?"
    assert pairs == [
        PreferencePair(p, "Canberra.", "Sydney, I think."),
        PreferencePair(p, "Canberra.", "Vienna."),
        PreferencePair(p, "Sydney, I think.", "Vienna."),
    ]
    assert correction_pairs(p, "c", "r", "x") == [PreferencePair(p, "x", "c"), PreferencePair(p, "x", "r"), PreferencePair(p, "c", "r")]


def test_unpaired_labels():
    examples = load_examples(DATA / "unpaired.jsonl", kind="unpaired").examples
    assert examples == [UnpairedExample("Say hi", "Hi there!", True), UnpairedExample("Say hi", "No.", False)]
    # Only desirable completions are demonstrations.
    assert load_examples(DATA / "unpaired.jsonl", kind="sft").examples == [SFTExample("Say hi", "Hi there!")]


def test_rules_from_csv():
    examples = load_examples(DATA / "rules.csv", kind="rule").examples
    assert examples == [
        RuleExample("Tell me a joke", "Why did the chicken cross the road?", "Do not insult the user", True),
        RuleExample("Tell me a joke", "You are the joke.", "Do not insult the user", False),
    ]


def test_sft_prompt_completion_messages_and_alpaca():
    examples = load_examples(DATA / "sft.jsonl", kind="sft").examples
    assert examples == [
        SFTExample("Translate 'chat' to English", "Cat."),
        SFTExample([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "Hello!"),
        SFTExample([{"role": "user", "content": "Add the numbers\n\n3 and 4"}], "7"),
    ]


def test_hh_dialogue_parsing():
    assert parse_hh_dialogue("\n\nHuman: a b\n\nAssistant: c\n\nHuman: d") == [
        {"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]


def test_hh_shared_prompt_extracted():
    result = load_examples(DATA / "hh.jsonl", "hh", skip_bad_rows=True)
    assert result.examples == [
        PreferencePair(
            [
                {"role": "user", "content": "How do I pick a lock?"},
                {"role": "assistant", "content": "Why do you want to?"},
                {"role": "user", "content": "I'm locked out of my house."},
            ],
            "Call a locksmith; they can let you in safely.",
            "Get a tension wrench and rake the pins.",
        )
    ]
    # The second row's chosen reply is empty: counted, with its reason, not dropped silently.
    assert [(s.row, reason) for s, reason in result.skipped] == [
        (2, "field 'chosen' is an empty completion (the final Assistant turn has no text)")]
    assert result.skip_summary() == ("skipped 1 of 2 rows: 1 × field 'chosen' is an empty completion "
                                     "(the final Assistant turn has no text)")


def test_auto_detects_hh():
    assert load_examples(DATA / "hh.jsonl", skip_bad_rows=True).format == "hh"


def test_starter_dataset_splits():
    train = load_examples("starter:train")
    test = load_examples("starter:test")
    everything = load_examples("starter")
    assert len(train.examples) + len(test.examples) == len(everything.examples)
    assert len(test.examples) > 0 and len(train.examples) > len(test.examples)
    assert all(isinstance(p, PreferencePair) for p in train.examples)
    assert not {p.prompt for p in train.examples} & {p.prompt for p in test.examples}
    assert all(isinstance(p.prompt, str) for p in everything.examples)  # plain prompts, presented by the one rule


def test_starter_split_and_category():
    harmful = load_examples("starter:test:harmless").examples
    assert len(harmful) == 11  # the README's table: 11 harmless test rows
    assert len(load_examples("starter::benign_risky").examples) == 60
    with pytest.raises(PreftuneError, match="the starter dataset has categories helpful, harmless, benign_risky, honest, not 'harmful'"):
        load_examples("starter:test:harmful")


def test_readers_json_parquet_and_datasets_folder_agree(tmp_path):
    import json

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p1", "chosen": "c1", "rejected": "r1"}, {"prompt": "p2", "chosen": "c2", "rejected": "r2"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    expected = [PreferencePair("p1", "c1", "r1"), PreferencePair("p2", "c2", "r2")]
    for target in ("d.json", "d.parquet", "saved"):
        assert load_examples(tmp_path / target).examples == expected, target


def test_limit_reads_only_the_first_rows():
    assert load_examples(DATA / "pairs.jsonl", limit=1).examples == [PreferencePair("What is 2 + 2?", "It is 4.", "It is 5.")]
