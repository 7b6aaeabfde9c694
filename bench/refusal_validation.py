"""The refusal classifier's validation set: build it from real completions, then measure classifiers against its labels.

    # 1. prompt files for the default model (XSTest and HarmBench ids; the text is joined from ../shared/data)
    python bench/refusal_validation.py prompts --out /tmp/rv
    # 2. the default model's completions, with preftune's own generate command (128 new tokens)
    preftune generate --prompts /tmp/rv/greedy.jsonl --max-new-tokens 128 --batch-size 32 --output /tmp/rv/out_greedy.jsonl
    preftune generate --prompts /tmp/rv/cautious_system.jsonl --max-new-tokens 128 --batch-size 32 --output /tmp/rv/out_cautious_system.jsonl
    preftune generate --prompts /tmp/rv/t0.8.jsonl --temperature 0.8 --seed 0 --max-new-tokens 128 --batch-size 32 --output /tmp/rv/out_t0.8.jsonl
    # 3. join them with the other models' real replies (HH-RLHF, JailbreakBench, oasst1) into unlabelled rows
    python bench/refusal_validation.py collect --generated /tmp/rv --out /tmp/rv/candidates.jsonl
    # 4. (a person labels each row: preftune/eval/refusal_validation.md), then
    python bench/refusal_validation.py measure [--learned] [--model-judge] [--classes-model FOLDER]
    # a class model on the dev half: export it, then preftune reward --objective classes (see BENCHMARKS.md)
    python bench/refusal_validation.py export --split dev --out /tmp/rv/dev_classes.jsonl

XSTest (Röttger et al. 2024, CC BY 4.0) and HarmBench (Mazeika et al. 2024) prompts are stored as ids and joined from
../shared/data; the other sources' texts (HH-RLHF MIT, JailbreakBench artifacts MIT, oasst1 Apache-2.0) are stored.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (condition, XSTest rows per type taken (start, stop), HarmBench standard val behaviours taken, cautious system prompt)
PLAN = (("greedy", (0, 3), None, False), ("t0.8", (3, 5), 0, False), ("cautious_system", (5, 8), 20, True))
#: JailbreakBench artifact files and how many responses of each are drawn
JBB_FILES = (("GCG/white_box/llama-2-7b-chat-hf.json", 20), ("GCG/transfer/gpt-4-0125-preview.json", 12),
             ("PAIR/black_box/gpt-3.5-turbo-1106.json", 12), ("GCG/white_box/vicuna-13b-v1.5.json", 8),
             ("PAIR/black_box/gpt-4-0125-preview.json", 8))
HH_ITEMS, OASST_ITEMS, SEED = 80, 20, 17
#: A second HH-RLHF stratum, enriched for refusals and partial refusals (rare in a random draw): replies of any turn
#: count that contain one of these words (broader than, and chosen before looking at, the classifier's patterns).
HH_HEDGE_WORDS = ("sorry", "can't", "cannot", "won't", "comfortable", "don't think", "instead", "rather not",
                  "not going to", "appropriate", "illegal", "not sure")
HH_HEDGE_ITEMS = 70
#: A third HH-RLHF stratum, enriched for partial refusals (the rarest class): a declining word and a turn word
HH_TURN_DECLINE = ("can't", "cannot", "won't", "not comfortable", "don't want", "sorry", "rather not", "not going to")
HH_TURN_WORDS = (" but ", "however", "though", "instead", "here ")
HH_TURN_ITEMS = 50
#: An oasst1 stratum, enriched for refusals and partial refusals: replies with a declining word in their first 400 characters
OASST_DECLINE = r"(can't|cannot|can not|won't|unable|not able|as an ai|i'm sorry|i am sorry|not appropriate|i don't think i should|not comfortable)"
OASST_DECLINE_ITEMS = 45
#: Last strata, for partial refusals: every remaining oasst1 / HH-RLHF reply with a first-person decline and a turn
DECLINE_FIRST_PERSON = r"(I can't|I cannot|I won't|I'm not going to|I don't want to|I'd rather not|I'm not comfortable|I'm sorry)"
TURN = r"(however|but I can|but here|that said|instead|here (?:is|are)|but if)"
#: A second JailbreakBench draw (responses not drawn above), for more long refusals and partial refusals
JBB_MORE_FILES = (("PAIR/black_box/gpt-4-0125-preview.json", 30), ("GCG/transfer/gpt-3.5-turbo-1106.json", 20),
                  ("GCG/white_box/llama-2-7b-chat-hf.json", 15), ("PAIR/black_box/vicuna-13b-v1.5.json", 10))


def _xstest_by_type(shared: Path) -> dict[str, list[dict]]:
    by_type: dict[str, list[dict]] = {}
    with open(shared / "xstest" / "xstest_prompts.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_type.setdefault(row["type"], []).append(row)
    return by_type


def _harmbench_standard(shared: Path) -> list[dict]:
    with open(shared / "harmbench" / "harmbench_behaviors_text_val.csv", newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["FunctionalCategory"] == "standard"]


def prompts(args) -> None:
    """One prompt file per condition, rows ``{source, prompt_id, prompt | messages}`` (read by ``preftune generate``)."""
    from preftune.eval.refusal_validation import CAUTIOUS_SYSTEM

    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_type, harmbench = _xstest_by_type(shared), _harmbench_standard(shared)
    for condition, (start, stop), hb_count, system in PLAN:
        rows = [("xstest", r["id"], r["prompt"]) for rows in by_type.values() for r in rows[start:stop]]
        rows += [("harmbench", r["BehaviorID"], r["Behavior"]) for r in harmbench[:hb_count]]
        with open(out / f"{condition}.jsonl", "w", encoding="utf-8") as f:
            for source, pid, text in rows:
                body = ({"messages": [{"role": "system", "content": CAUTIOUS_SYSTEM}, {"role": "user", "content": text}]}
                        if system else {"prompt": text})
                f.write(json.dumps({"source": source, "prompt_id": pid, **body}, ensure_ascii=False) + "\n")
        print(f"{condition}: {len(rows)} prompts -> {out / f'{condition}.jsonl'}")


def _hh_rows(shared: Path, rng: random.Random) -> list[dict]:
    """Single-turn HH-RLHF harmless-base conversations: the 52B assistant's one reply (chosen or rejected side, drawn)."""
    lines = [json.loads(x) for x in gzip.open(shared / "hh_harmless" / "pairs.jsonl.gz", "rt", encoding="utf-8")]
    single = [i for i, r in enumerate(lines) if r["chosen"].count("\n\nHuman:") == 1]
    out = []
    for i in sorted(rng.sample(single, HH_ITEMS)):
        side = rng.choice(("chosen", "rejected"))
        human, _, reply = lines[i][side].partition("\n\nAssistant:")
        out.append({"source": "hh_harmless", "prompt_id": f"{i}:{side}", "model": "anthropic-52b (HH-RLHF)",
                    "condition": "dataset", "prompt": human.replace("\n\nHuman:", "", 1).strip(), "completion": reply.strip()})
    return out


def _hh_hedge_rows(shared: Path, rng: random.Random, taken: set[str], *, words=HH_HEDGE_WORDS, also=(), count=HH_HEDGE_ITEMS,
                   condition="hedge_words") -> list[dict]:
    """HH-RLHF final assistant replies (any number of turns) holding one of ``words`` (and one of ``also`` when given);
    the prompt is the whole dialogue before the reply."""
    lines = [json.loads(x) for x in gzip.open(shared / "hh_harmless" / "pairs.jsonl.gz", "rt", encoding="utf-8")]
    pool = []
    for i, r in enumerate(lines):
        for side in ("chosen", "rejected"):
            head, _, reply = r[side].rpartition("\n\nAssistant:")
            reply = reply.strip().replace("\u2019", "'")
            low = reply.lower()
            if (f"{i}:{side}" not in taken and reply and any(w in low for w in words)
                    and (not also or any(w in low for w in also))):
                pool.append((i, side, head.strip(), reply))
    out = []
    for i, side, head, reply in sorted(rng.sample(pool, count)):
        raw = lines[i][side].rpartition("\n\nAssistant:")[2].strip()
        out.append({"source": "hh_harmless", "prompt_id": f"{i}:{side}", "model": "anthropic-52b (HH-RLHF)",
                    "condition": condition, "prompt": head, "completion": raw})
    return out


def _jbb_rows(shared: Path, rng: random.Random, files=JBB_FILES, taken: frozenset[str] = frozenset()) -> list[dict]:
    out = []
    for name, count in files:
        rows = [r for r in json.loads((shared / "jailbreakbench_artifacts" / name).read_text())["jailbreaks"]
                if r["response"] and f"{name}:{r['index']}" not in taken]
        for r in sorted(rng.sample(rows, count), key=lambda r: r["index"]):
            out.append({"source": "jailbreakbench", "prompt_id": f"{name}:{r['index']}", "model": Path(name).stem,
                        "condition": name.split("/")[0], "prompt": r["goal"], "completion": r["response"].strip()})
    return out


def _oasst_rows(shared: Path, rng: random.Random) -> list[dict]:
    """Replies to first turns of oasst1 conversations (people writing as the assistant)."""
    msgs = [json.loads(x) for x in gzip.open(shared / "oasst1" / "oasst1_en_validation.jsonl.gz", "rt", encoding="utf-8")]
    by_id = {m["message_id"]: m for m in msgs}
    replies = [m for m in msgs if m["role"] == "assistant" and m["parent_id"] in by_id and by_id[m["parent_id"]]["parent_id"] is None]
    return [{"source": "oasst1", "prompt_id": m["message_id"], "model": "human (oasst1)", "condition": "dataset",
             "prompt": by_id[m["parent_id"]]["text"], "completion": m["text"].strip()}
            for m in sorted(rng.sample(replies, OASST_ITEMS), key=lambda m: m["message_id"])]


def _oasst_decline_rows(shared: Path, rng: random.Random, taken: set[str]) -> list[dict]:
    """oasst1 replies (any turn) with a declining word near their start; the prompt is the message replied to."""
    import re

    msgs = [json.loads(x) for x in gzip.open(shared / "oasst1" / "oasst1_en_validation.jsonl.gz", "rt", encoding="utf-8")]
    by_id = {m["message_id"]: m for m in msgs}
    decline = re.compile(OASST_DECLINE, re.IGNORECASE)
    pool = [m for m in msgs if m["role"] == "assistant" and m["parent_id"] in by_id and m["message_id"] not in taken
            and decline.search(m["text"][:400])]
    return [{"source": "oasst1", "prompt_id": m["message_id"], "model": "human (oasst1)", "condition": "decline_words",
             "prompt": by_id[m["parent_id"]]["text"], "completion": m["text"].strip()}
            for m in sorted(rng.sample(pool, OASST_DECLINE_ITEMS), key=lambda m: m["message_id"])]


def _turn_rows(shared: Path, taken: set[str]) -> list[dict]:
    """Every oasst1 reply with a declining word near its start and a turn word, and every HH-RLHF final reply with a
    first-person decline and a turn word, not drawn before (all of them, so no sampling)."""
    import re

    out = []
    decline, turn = re.compile(OASST_DECLINE, re.IGNORECASE), re.compile(TURN, re.IGNORECASE)
    msgs = [json.loads(x) for x in gzip.open(shared / "oasst1" / "oasst1_en_validation.jsonl.gz", "rt", encoding="utf-8")]
    by_id = {m["message_id"]: m for m in msgs}
    for m in msgs:
        if (m["role"] == "assistant" and m["parent_id"] in by_id and m["message_id"] not in taken
                and decline.search(m["text"][:400]) and turn.search(m["text"])):
            out.append({"source": "oasst1", "prompt_id": m["message_id"], "model": "human (oasst1)", "condition": "decline_and_turn_words",
                        "prompt": by_id[m["parent_id"]]["text"], "completion": m["text"].strip()})
    first_person = re.compile(DECLINE_FIRST_PERSON, re.IGNORECASE)
    lines = [json.loads(x) for x in gzip.open(shared / "hh_harmless" / "pairs.jsonl.gz", "rt", encoding="utf-8")]
    for i, r in enumerate(lines):
        for side in ("chosen", "rejected"):
            head, _, reply = r[side].rpartition("\n\nAssistant:")
            plain = reply.replace("\u2019", "'")
            if f"{i}:{side}" not in taken and first_person.search(plain) and turn.search(plain):
                out.append({"source": "hh_harmless", "prompt_id": f"{i}:{side}", "model": "anthropic-52b (HH-RLHF)",
                            "condition": "first_person_decline_and_turn", "prompt": head.strip(), "completion": reply.strip()})
    return out


def collect(args) -> None:
    """The default model's completions (joined to their prompt ids by order) and the other sources' replies, unlabelled."""
    from preftune.eval.refusal_validation import split_of

    shared, gen = Path(args.shared), Path(args.generated)
    rows = []
    for condition, *_ in PLAN:
        asked = [json.loads(x) for x in (gen / f"{condition}.jsonl").read_text().splitlines()]
        answered = [json.loads(x) for x in (gen / f"out_{condition}.jsonl").read_text().splitlines()]
        if len(asked) != len(answered):
            raise SystemExit(f"{condition}: {len(asked)} prompts but {len(answered)} completions")
        rows += [{"source": a["source"], "prompt_id": a["prompt_id"], "model": "smollm2-135m-instruct", "condition": condition,
                  "completion": b["response"]} for a, b in zip(asked, answered)]
    rng = random.Random(SEED)
    rows += _hh_rows(shared, rng) + _jbb_rows(shared, rng) + _oasst_rows(shared, rng)
    rows += _hh_hedge_rows(shared, rng, {r["prompt_id"] for r in rows if r["source"] == "hh_harmless"})
    rows += _jbb_rows(shared, rng, JBB_MORE_FILES, frozenset(r["prompt_id"] for r in rows if r["source"] == "jailbreakbench"))
    rows += _hh_hedge_rows(shared, rng, {r["prompt_id"] for r in rows if r["source"] == "hh_harmless"}, words=HH_TURN_DECLINE,
                           also=HH_TURN_WORDS, count=HH_TURN_ITEMS, condition="decline_and_turn_words")
    rows += _oasst_decline_rows(shared, rng, {r["prompt_id"] for r in rows if r["source"] == "oasst1"})
    rows += _turn_rows(shared, {r["prompt_id"] for r in rows})
    for r in rows:
        r["split"] = split_of(r)
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} unlabelled rows to {args.out}")


def export(args) -> None:
    """One half of the set as prompt / response / label rows, the data of ``preftune reward --objective classes``."""
    from preftune.eval.refusal_validation import load_validation_set

    rows = [r for r in load_validation_set(shared=args.shared) if args.split == "all" or r["split"] == args.split]
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "response": r["completion"], "label": r["label"]}, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} {args.split} rows to {args.out}")


def measure(args) -> None:
    from preftune.eval.refusal import PatternRefusalClassifier
    from preftune.eval.refusal_validation import agreement_table, load_validation_set

    rows = load_validation_set(shared=args.shared)
    classifiers = {}
    if args.old_patterns:  # the pattern classifier as it was at a git revision, for a before/after figure
        import importlib.util
        import subprocess
        import tempfile

        code = subprocess.run(["git", "-C", str(REPO), "show", f"{args.old_patterns}:preftune/eval/refusal.py"],
                              check=True, capture_output=True, text=True).stdout
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(code)
        spec = importlib.util.spec_from_file_location("old_refusal", f.name)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_refusal"] = old  # dataclasses look their module up
        spec.loader.exec_module(old)
        classifiers[f"patterns at {args.old_patterns}"] = old.PatternRefusalClassifier()
    classifiers["patterns"] = PatternRefusalClassifier()
    if args.learned:
        from preftune.eval.refusal_validation import LearnedRefusalClassifier

        classifiers["learned (fitted on dev)"] = LearnedRefusalClassifier.from_validation_set(split="dev")
    if args.classes_model:
        from preftune.eval.refusal import ClassModelRefusalClassifier

        classifiers["classes (reward --objective classes, trained on dev)"] = ClassModelRefusalClassifier.load(args.classes_model)
    if args.model_judge:
        from preftune.eval.refusal import ModelRefusalClassifier
        from preftune.models.loading import load_model, load_tokenizer

        classifiers["model (default model, hybrid)"] = ModelRefusalClassifier(load_model(None), load_tokenizer(None))
    table = agreement_table(rows, classifiers)
    # the default model's rows are nearly all compliance (easy): the same figures without them
    others = [r for r in rows if r["model"] != "smollm2-135m-instruct"]
    without = {f"{name} (without the default model's rows)": per for name, per in agreement_table(others, classifiers).items()}
    if args.json:
        Path(args.json).write_text(json.dumps({**table, **without}, indent=2))
    for name, per in {**table, **without}.items():
        for split, a in per.items():
            print(f"{name:32s} {split:5s} n={a['n']:4d} three-class {a['three_class']:.3f} two-class {a['two_class']:.3f}")
            for e in a["confusion"]:
                print(f"      labelled {e:10s} -> " + "  ".join(f"{p}: {c}" for p, c in a["confusion"][e].items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("prompts", "collect", "export", "measure"))
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default="/tmp/rv")
    ap.add_argument("--generated", default="/tmp/rv")
    ap.add_argument("--learned", action="store_true", help="also the learned classifier, fitted on the dev half")
    ap.add_argument("--old-patterns", default=None, help="a git revision: also the pattern classifier as it was there")
    ap.add_argument("--model-judge", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--split", default="dev", choices=("dev", "test", "all"), help="export: which half")
    ap.add_argument("--classes-model", default=None, help="measure: also a model from 'preftune reward --objective classes'")
    args = ap.parse_args()
    {"prompts": prompts, "collect": collect, "export": export, "measure": measure}[args.mode](args)


if __name__ == "__main__":
    main()
