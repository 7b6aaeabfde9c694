"""The refusal classifier's validation set: generate real completions, then measure classifiers against the labels.

    # 1. generate the default model's answers (under the heavy lock; ~5 min on 2 CPU cores)
    python bench/refusal_validation.py generate --out /tmp/refusal_completions.jsonl
    # 2. (people label them: preftune/eval/refusal_validation.md)
    # 3. agreement of each classifier with the labels, on the development and held-out halves
    python bench/refusal_validation.py measure [--model-judge]

The set stores prompt ids, never prompt text: XSTest (Röttger et al. 2024, CC BY 4.0) and HarmBench (Mazeika et al.
2024, MIT) are joined from ../shared/data at run time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (condition, XSTest rows per type taken, temperature, with the cautious system prompt)
PLAN = (("greedy", 6, 0.0, False), ("cautious_system", 3, 0.0, True), ("t1.0", 3, 1.0, False), ("t0.7", 3, 0.7, False))


def generate(args) -> None:
    from preftune.eval.refusal_validation import CAUTIOUS_SYSTEM, read_prompt_sources
    from preftune.generation.scoring import prompt_ids
    from preftune.generation.engine import HFEngine, SamplingParams
    from preftune.models.loading import load_model, load_tokenizer

    xstest, harmbench = read_prompt_sources(args.shared)
    by_type: dict[str, list] = {}
    for pid, row in xstest.items():
        by_type.setdefault(row["type"], []).append(pid)
    jobs = []  # (source, prompt id, condition, temperature, system)
    start = 0
    for condition, per_type, temperature, system in PLAN:
        for ids in by_type.values():
            for pid in ids[start:start + per_type]:
                jobs.append(("xstest", pid, condition, temperature, system))
        start += per_type
    hb_ids = [pid for pid, row in harmbench.items() if row["FunctionalCategory"] in ("standard", "copyright")
              and row["split"] == "val"]
    jobs += [("harmbench", pid, "greedy", 0.0, None) for pid in hb_ids]
    model, tok = load_model(args.model), load_tokenizer(args.model)
    engine = HFEngine(model, tok, batch_size=args.batch_size)
    out_path = Path(args.out)
    out_rows = [json.loads(line) for line in out_path.read_text().splitlines()] if out_path.exists() else []
    done = {r["condition"] for r in out_rows}  # a rerun resumes: each condition is written when it finishes
    for condition, _, temperature, system in PLAN:
        if condition in done:
            continue
        sel = [j for j in jobs if j[2] == condition]
        texts = [(xstest[j[1]]["prompt"] if j[0] == "xstest" else harmbench[j[1]]["Behavior"]) for j in sel]
        prompts = [[{"role": "system", "content": CAUTIOUS_SYSTEM}, {"role": "user", "content": t}] if system else t for t in texts]
        ids = [prompt_ids(tok, p) for p in prompts]
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=temperature or 1.0, seed=args.seed,
                                do_sample=temperature > 0)
        out = engine.generate(ids, params)
        for j, text in zip(sel, out.texts):
            out_rows.append({"source": j[0], "prompt_id": j[1], "condition": condition, "completion": text})
        out_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows), encoding="utf-8")
        print(f"{condition}: {len(sel)} completions", flush=True)
    print(f"wrote {len(out_rows)} completions to {args.out}")


def measure(args) -> None:
    from preftune.eval.refusal import PatternRefusalClassifier
    from preftune.eval.refusal_validation import agreement_table, load_validation_set

    rows = load_validation_set(shared=args.shared)
    classifiers = {"patterns": PatternRefusalClassifier()}
    if args.model_judge:
        from preftune.eval.refusal import ModelRefusalClassifier
        from preftune.models.loading import load_model, load_tokenizer

        classifiers["model (default model, hybrid)"] = ModelRefusalClassifier(load_model(None), load_tokenizer(None))
    print(json.dumps(agreement_table(rows, classifiers), indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("generate", "measure"))
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="/tmp/refusal_completions.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model-judge", action="store_true")
    args = ap.parse_args()
    generate(args) if args.mode == "generate" else measure(args)


if __name__ == "__main__":
    main()
