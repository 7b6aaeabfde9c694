"""Red-team prompts for the Constitutional AI benchmark: the first human turn of each Anthropic HH harmless dialogue
(as Constitutional AI used), from ../shared/data/hh_harmless/pairs.jsonl.gz (never copied into the project).

Writes, under OUT (default bench/cai/work): sl_prompts.jsonl (rows 0..63: SL-CAI), label_pairs.jsonl (the 64
HH pairs of rows 64..127 with their first human turn as the prompt, their human-chosen and rejected final
replies as given: the AI labels are compared with the human labels), heldout_pairs.jsonl (64 more
single-turn HH pairs from row 1000 on: the reward model's agreement with human labels), dpo_prompts.jsonl (rows
400..463), eval_prompts.jsonl (rows 500..563: the reward-model win rates).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from preftune.data.fields import parse_hh_dialogue
from preftune.data.formats import Source
from preftune.errors import DataError
from preftune.data.convert import hh_pair_from_row

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh_harmless" / "pairs.jsonl.gz"


def main(out: str = "bench/cai/work") -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in gzip.open(DATA, "rt", encoding="utf-8")]
    firsts, pairs = [], []
    for i, row in enumerate(rows):
        turns = parse_hh_dialogue(row["chosen"])
        firsts.append(turns[0]["content"])
        try:
            pair = hh_pair_from_row(row, Source(str(DATA), i + 1))
        except DataError:  # a handful of HH rows have an empty final reply: not usable as a pair
            continue
        pairs.append((turns[0]["content"], len(pair.prompt), pair.chosen, pair.rejected))

    def write(name: str, items) -> None:
        with (root / name).open("w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")

    write("sl_prompts.jsonl", [{"prompt": p} for p in firsts[0:64]])
    # single-turn pairs only: the prompt is then exactly the first human turn
    single = [(p, c, r) for p, n, c, r in pairs[64:] if n == 1][:64]
    write("label_pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in single])
    write("heldout_pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, n, c, r in pairs[1000:] if n == 1][:64])
    write("dpo_prompts.jsonl", [{"prompt": p} for p in firsts[400:464]])
    write("eval_prompts.jsonl", [{"prompt": p} for p in firsts[500:564]])
    print(f"wrote {root}: 64 SL prompts, {len(single)} label pairs, 64 DPO prompts", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
