"""`preftune data inspect`: counts, skipped rows with reasons, token-length statistics, one example."""

from __future__ import annotations

import json
from pathlib import Path

from preftune import cli
from preftune.data.inspect import length_stats

DATA = Path(__file__).parent / "fixtures" / "data"


def test_length_stats_hand_computed():
    # sorted: 1 2 3 4 10 → mean 4, median 3, p95 nearest rank ceil(0.95·5)=5 → 10
    assert length_stats([3, 1, 10, 2, 4]) == {"count": 5, "min": 1, "mean": 4.0, "median": 3, "p95": 10, "max": 10}
    assert length_stats([]) == {"count": 0}


def test_inspect_json_on_fixture(capsys, default_tokenizer):
    assert cli.main(["data", "inspect", str(DATA / "bad_pairs.jsonl"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "preference"
    assert report["counts"] == {"rows": 5, "examples": 2, "skipped": 3, "pairs": 2}
    assert [s["row"] for s in report["skipped_rows"]] == [2, 3, 4]
    assert report["example"]["prompt"] == "Fine row" and report["example"]["source_row"] == 1
    # "yes"/"good" are one token each + EOS → chosen lengths 2 and 2
    assert report["token_lengths"]["chosen"]["max"] == 2


def test_inspect_strict_stops_at_first_bad_row(capsys, default_tokenizer):
    assert cli.main(["data", "inspect", str(DATA / "bad_pairs.jsonl"), "--strict"]) == 2
    assert "row 2, field 'rejected': missing" in capsys.readouterr().err


def test_inspect_hh_real_data(capsys, default_tokenizer):
    from conftest import shared_data

    path = shared_data("hh_harmless/pairs.jsonl.gz")
    assert cli.main(["data", "inspect", str(path), "--format", "hh", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"rows": 1800, "examples": 1798, "skipped": 2, "pairs": 1798}
    assert [s["row"] for s in report["skipped_rows"]] == [276, 1173]
    assert report["token_lengths"]["prompt+completion"]["count"] == 2 * 1798
