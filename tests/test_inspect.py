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


def test_inspect_oasst_reports_prompts_rankings_pairs_and_skips(capsys, default_tokenizer):
    assert cli.main(["data", "inspect", str(DATA / "oasst_messages.jsonl"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "oasst"
    assert report["counts"] == {"rows": 15, "examples": 5, "skipped": 5, "prompts": 3, "rankings": 3, "pairs": 5}
    assert report["skipped_rows"] == [
        {"row": 11, "reason": "unranked reply: in no ranking (its replies are still read)"},
        {"row": 13, "reason": "deleted message"}, {"row": 1, "reason": "language 'de' not in --lang en"},
        {"row": 10, "reason": "failed review"}, {"row": 5, "reason": "reply to a dropped message"}]
    assert cli.main(["data", "inspect", str(DATA / "oasst_messages.jsonl"), "--lang", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["pairs"] == 7


def test_inspect_real_oasst1(capsys, default_tokenizer):
    from conftest import shared_data

    path = shared_data("oasst1/oasst1_en_validation.jsonl.gz")
    assert cli.main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(format: oasst, examples: preference)" in out
    assert "rows: 1946   examples: 985   prompts: 401   rankings: 401   pairs: 985   skipped: 135" in out
    assert ("skipped 135 of 1946 rows: 48 × unranked reply: in no ranking (its replies are still read), 40 × failed "
            "review, 25 × deleted message, 15 × reply to a dropped message, 3 × field 'parent_id' the parent message is "
            "not in the file, 3 × the only ranked reply to its message: nothing to compare, 1 × the same text as a "
            "better-ranked reply to its message: in no ranking") in out


def test_inspect_redteam_transcripts_counts_the_labels(capsys, default_tokenizer):
    """Rule data reports how its labels split; the red-team threshold moves the rating-3 transcript."""
    path = str(DATA / "red_team_attempts.jsonl")
    assert cli.main(["data", "inspect", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["format"], report["kind"]) == ("redteam", "rule")
    assert report["counts"] == {"rows": 3, "examples": 3, "skipped": 0, "followed": 1, "broken": 2}
    assert cli.main(["data", "inspect", path, "--json", "--redteam-success-rating", "3.5"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"rows": 3, "examples": 3, "skipped": 0, "followed": 2, "broken": 1}
