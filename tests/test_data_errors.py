"""Every bad-input case gives a clear error naming file, row and field, or a counted skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.data.convert import load_examples, tokenize_all
from preftune.data.tokenize import encode_pair
from preftune.errors import DataError, PreftuneError

DATA = Path(__file__).parent / "fixtures" / "data"
BAD = str(DATA / "bad_pairs.jsonl")


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_examples(path, **kwargs)
    return str(info.value)


def test_missing_field():
    assert _error(BAD) == f"{BAD}, row 2, field 'rejected': missing (the row has fields: chosen, prompt)"


def test_skip_bad_rows_counts_each_with_its_reason():
    result = load_examples(BAD, skip_bad_rows=True)
    assert [p.prompt for p in result.examples] == ["Fine row", "Another fine row"]
    assert [(s.row, r) for s, r in result.skipped] == [
        (2, "field 'rejected' missing (the row has fields: chosen, prompt)"),
        (3, "field 'chosen' is an empty completion"),
        (4, "field 'rejected' is identical to 'chosen' (a pair must compare two different responses)"),
    ]
    assert result.skip_summary().startswith("skipped 3 of 5 rows: ")


def _one_row(tmp_path, row) -> str:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return str(path)


def test_empty_completion(tmp_path):
    path = _one_row(tmp_path, {"prompt": "p", "chosen": "", "rejected": "r"})
    assert _error(path) == f"{path}, row 1, field 'chosen': is an empty completion"


def test_chosen_identical_to_rejected(tmp_path):
    path = _one_row(tmp_path, {"prompt": "p", "chosen": "same ", "rejected": "same"})
    assert _error(path) == (f"{path}, row 1, field 'rejected': is identical to 'chosen' "
                            "(a pair must compare two different responses)")


def test_wrong_type(tmp_path):
    path = _one_row(tmp_path, {"prompt": "p", "chosen": 3, "rejected": "r"})
    assert _error(path) == f"{path}, row 1, field 'chosen': expected text, got int"


def test_bad_boolean_label(tmp_path):
    path = _one_row(tmp_path, {"prompt": "p", "completion": "c", "label": "maybe"})
    assert _error(path, kind="unpaired") == f"{path}, row 1, field 'label': expected true or false, got 'maybe'"


def test_invalid_json_line():
    path = str(DATA / "broken.jsonl")
    assert _error(path) == f"{path}, row 2: invalid JSON: Expecting value at column 32"


def test_unknown_format():
    with pytest.raises(PreftuneError) as info:
        load_examples(BAD, "yaml-pairs")
    assert str(info.value) == ("unknown data format 'yaml-pairs' (choose from auto, sft, preference, hh, ranking, "
                               "correction, unpaired, rule, oasst, ratings, scored, jailbreak, self_instruct, redteam)")


def test_format_that_cannot_give_the_kind():
    with pytest.raises(PreftuneError) as info:
        load_examples(DATA / "rules.csv", kind="preference")
    assert str(info.value) == f"{DATA / 'rules.csv'}: 'rule' data cannot give preference examples (it gives: rule)"


def test_undetectable_format(tmp_path):
    path = _one_row(tmp_path, {"question": "q", "answer": "a"})
    assert _error(path) == (f"{path}, row 1: cannot tell the format from the fields ['answer', 'question']; name it "
                            "with --format (one of sft, preference, hh, ranking, correction, unpaired, rule, oasst, ratings, "
                            "scored, jailbreak, self_instruct, redteam)")


def test_missing_file():
    assert _error("no/such/file.jsonl") == "no/such/file.jsonl: no such file or folder"


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    assert _error(path) == (f"{path}: unknown file type (readable: .jsonl, .json, .csv, .parquet, .jsonl.gz, .json.gz, "
                            ".csv.gz, a saved datasets folder, or a hub id)")


def test_unreadable_file(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    assert _error(path) == f"{path}: cannot read the file (BadGzipFile: Not a gzipped file (b'no'))"


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\nd,e,f,g\n")
    assert _error(path) == f"{path}, row 2: has 4 cells but the header has 3"


def test_conversational_prompt_ending_with_assistant(tmp_path):
    path = _one_row(tmp_path, {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"})
    assert _error(path) == (f"{path}, row 1, field 'prompt': a conversational prompt must end with a user (or system) "
                            "turn, not an assistant one")


def test_row_over_the_length_limit(chatml_tokenizer):
    pair = load_examples(DATA / "pairs.jsonl", limit=1).examples[0]
    with pytest.raises(DataError) as info:
        encode_pair(chatml_tokenizer, pair, max_length=5)
    n = len(encode_pair(chatml_tokenizer, pair).chosen_input_ids)
    assert str(info.value) == (f"{DATA / 'pairs.jsonl'}, row 1, field 'prompt+chosen': {n} tokens is over the length "
                               "limit of 5 (raise max_length, or skip such rows with skip_bad_rows)")
    skipped: list = []
    kept = tokenize_all([pair], lambda p: encode_pair(chatml_tokenizer, p, 5), skip_bad_rows=True, skipped=skipped)
    assert kept == [] and skipped[0][0].row == 1 and "over the length limit" in skipped[0][1]
