"""The README's example row of each format: detected as the format it is listed under, and read as the examples the
table says it becomes (exactly)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from preftune.data.convert import load_examples
from preftune.data.formats import PreferencePair, RuleExample, SFTExample, UnpairedExample

README = Path(__file__).resolve().parents[1] / "README.md"
Q = "Name a primary colour."
USER = [{"role": "user", "content": Q}]

# format → (the kind of examples read, the examples the README's "becomes" column describes)
EXPECTED = {
    "sft": ("sft", [SFTExample(Q, "Red.")]),
    "preference": ("preference", [PreferencePair(Q, "Red.", "Purple.", margin=1.0)]),
    "hh": ("preference", [PreferencePair(USER, "Red.", "Purple.")]),
    "ranking": ("preference", [PreferencePair(Q, "Red.", "Blue, I think."), PreferencePair(Q, "Red.", "Purple."),
                               PreferencePair(Q, "Blue, I think.", "Purple.")]),
    "correction": ("preference", [PreferencePair(Q, "Blue.", "Blue, I think."), PreferencePair(Q, "Blue.", "Purple."),
                                  PreferencePair(Q, "Blue, I think.", "Purple.")]),
    "unpaired": ("unpaired", [UnpairedExample(Q, "Purple.", False)]),
    "rule": ("rule", [RuleExample(Q, "Purple.", "Only state facts.", False)]),
}


def readme_example_rows() -> dict[str, dict]:
    """{format: row} from the table that follows "An example row of each format above"."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("An example row of each format above"))
    rows = {}
    assert lines[start + 1:start + 4] == ["", "| format | example row | becomes |", "|---|---|---|"]
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        name, example = re.match(r"\| `(\w+)` \| `(.*?)` \|", line).groups()
        rows[name] = json.loads(example)
    return rows


def test_every_format_of_the_first_data_table_has_an_example_row():
    text = README.read_text(encoding="utf-8")
    first_table = text[text.index("| format | fields | gives |"):text.index("An example row of each format above")]
    listed = re.findall(r"^\| `(\w+)` \|", first_table, flags=re.M)
    native = {"oasst", "ratings", "scored", "jailbreak", "self_instruct", "redteam"}  # their example rows are in the native-formats table
    assert set(listed) - native == set(readme_example_rows()) == set(EXPECTED)
    native_table = text[text.index("Public datasets in their native shapes"):]
    assert {f for f in native if f"| `{f}`" in native_table} == native


def test_each_example_row_becomes_what_the_table_says(tmp_path):
    for name, row in readme_example_rows().items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        kind, expected = EXPECTED[name]
        result = load_examples(path, kind=kind)
        assert (name, result.format, result.examples, result.skipped) == (name, name, expected, [])
