"""Inputs for the leaderboard and judge–human agreement sections from OpenAssistant oasst1 (Köpf et al. 2023), the
real human rankings in ../shared/data/oasst1 (Apache-2.0):

* ``pairs.jsonl``: human judgements in the feedback app's format (``prompt``, ``response_a``, ``response_b``,
  ``preference``), one per pair of sibling replies to a first-turn prompt, preferring the better-ranked reply. The
  shown order alternates (better reply first on even pairs) so that position bias is measurable. oasst1 publishes one
  aggregated rank per reply, not each ranker's vote, so there is one judgement per pair (no human–human figure).
* ``prompts.jsonl`` and, per rank r, ``rank{r}.jsonl`` (``prompt``, ``response``): the human replies of rank r, as
  "models" for the leaderboard next to real models.

    python bench/harms_real_data.py --out /tmp/harms_oasst --pairs 80 --prompts 20 --max-chars 1000
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from preftune.data.readers import read_rows

REPO = Path(__file__).resolve().parents[1]


def longer_is_better(prompts, responses):
    """A baseline judge (``--judges '[reward:bench/harms_real_data.py:longer_is_better]'``): the longer answer, in words."""
    return [float(len(r.split())) for r in responses]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "oasst1" / "oasst1_en_validation.jsonl.gz"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--max-chars", type=int, default=1500, help="skip replies longer than this (the judge reads them)")
    args = ap.parse_args()
    rows = [r for _, r in read_rows(args.data)]
    roots = {r["message_id"]: r for r in rows if r["parent_id"] is None and r["role"] == "prompter" and not r["deleted"]}
    replies: dict[str, list[dict]] = {}
    for r in rows:
        if r["role"] == "assistant" and r["parent_id"] in roots and r["rank"] is not None and not r["deleted"]:
            replies.setdefault(r["parent_id"], []).append(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs, complete = [], []
    for pid, sib in replies.items():
        sib = sorted((s for s in sib if len(s["text"]) <= args.max_chars), key=lambda s: s["rank"])
        if len(sib) >= 3 and len(roots[pid]["text"]) <= args.max_chars:
            complete.append((roots[pid]["text"], sib))
        for better, worse in itertools.combinations(sib, 2):
            if better["rank"] == worse["rank"]:
                continue
            first = len(pairs) % 2 == 0
            a, b = (better, worse) if first else (worse, better)
            pairs.append({"prompt": roots[pid]["text"], "response_a": a["text"], "response_b": b["text"],
                          "preference": "a" if first else "b", "annotator": "oasst1-ranking"})
    pairs = pairs[: args.pairs]
    (out / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    complete = complete[: args.prompts]
    (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p, _ in complete), encoding="utf-8")
    for r in range(3):
        (out / f"oasst-rank{r}.jsonl").write_text("".join(json.dumps({"prompt": p, "response": s[r]["text"]}, ensure_ascii=False) + "\n"
                                                     for p, s in complete), encoding="utf-8")
    print(f"wrote {len(pairs)} judged pairs and {len(complete)} prompts with replies of ranks 0-2 to {out}")


if __name__ == "__main__":
    main()
