"""Personalise the default model to one annotator's taste, with a simulated annotator instead of a person.

The loop of the README's walk-through, end to end, through the same code a human session uses:

1. 4 sampled candidates for each of 30 starter prompts from the default model (``preftune generate``'s engine);
2. pairwise items in a feedback database (``preftune annotate``'s store: assignments, randomised left/right order);
3. a simulated annotator — a Python function that prefers the *shorter* answer — answers every item through
   :meth:`FeedbackStore.submit`, exactly as the web app's ``POST /api/submit`` does;
4. ``preftune dpo --data feedback.sqlite`` (LoRA) trains on the database itself;
5. ``preftune eval`` compares the tuned model with the default one on new prompts (the starter test split) under the
   same annotator's preference (``reward:...:shorter_reward`` as a hard judge: the shorter answer wins), and reports
   the win rate with its bootstrap interval.

Run (the candidates alone took 6 minutes for 2 of 4 batches on a busy 2-core machine: expect 15-30 minutes there)::

    python examples/personalise_simulated.py --out runs/personalise
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # the checkout, when run from a clone without installing


def shorter_reward(prompts, responses):
    """The simulated annotator's taste as a reward: shorter is better (characters)."""
    return [-float(len(r)) for r in responses]


def simulated_choice(shown: list[str]) -> dict:
    """The simulated annotator's answer to a pairwise item as shown on screen (left, right)."""
    left, right = (len(t) for t in shown)
    return {"choice": "tie"} if left == right else {"choice": "left" if left < right else "right"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/personalise")
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--candidate-tokens", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--eval-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    from preftune.cli import main as preftune
    from preftune.commands.evaluate import GenerateConfig, _Models, generate_responses
    from preftune.eval.data import load_prompt_set
    from preftune.feedback.items import build_items
    from preftune.feedback.store import FeedbackStore

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 1. candidates: K sampled answers per training prompt (each prompt prefilled once for its K rows)
    seen, prompts = set(), []
    for item in load_prompt_set("starter:train"):
        if item.key not in seen:
            seen.add(item.key)
            prompts.append(item.prompt)
        if len(prompts) == args.prompts:
            break
    config = GenerateConfig(prompts="starter:train", output=str(out / "candidates.jsonl"), temperature=1.0,
                            max_new_tokens=args.candidate_tokens, seed=0, batch_size=8)
    model, tokenizer = _Models(None, None).get(None)
    flat = generate_responses(model, tokenizer, prompts, config, args.num_samples)
    k = args.num_samples
    candidates = [list(dict.fromkeys(r["response"] for r in flat[i * k:(i + 1) * k] if r["response"].strip()))
                  for i in range(len(prompts))]
    del model

    # 2. items: every pair of the K candidates of each prompt
    db = out / "feedback.sqlite"
    if db.exists():
        db.unlink()
    store = FeedbackStore(db, seed=0)
    items, notes = build_items("pairwise", prompts, candidates, pairs_per_prompt=k * (k - 1) // 2)
    store.add_items("pairwise", items)
    # 3. the simulated annotator answers each item as the app shows it
    who = store.authenticate(store.add_annotator("prefers-short"))
    n = 0
    while (assignment := store.next_assignment(who)) is not None:
        store.submit(who, f"sim-{n:08d}", assignment.id, simulated_choice(assignment.shown_responses))
        n += 1
    print(f"annotated {n} pairs of {len(prompts)} prompts ({len(notes)} prompts gave no pair)")
    t_data = time.time() - t0

    # 4. DPO (LoRA, merged at the end) on the database itself
    run = out / "dpo"
    assert preftune(["dpo", "--data", str(db), "--output-dir", str(run), "--lora", "--merge", "--max-steps", str(args.max_steps),
                     "--batch-size", "8", "--learning-rate", str(args.learning_rate), "--beta", "0.1", "--seed", "0"]) == 0
    t_train = time.time() - t0 - t_data

    # 5. win rate on new prompts under the annotator's preference
    report = out / "eval"
    assert preftune(["eval", "--model", str(run / "final"), "--baseline", "smollm2-135m-instruct", "--prompts", "starter:test",
                     "--judges", f"[reward:{HERE}:shorter_reward]", "--judge-reward-mode", "hard",
                     "--max-new-tokens", str(args.eval_tokens), "--no-bertscore", "--no-text-metrics",
                     "--bootstrap-samples", "2000", "--output-dir", str(report)]) == 0
    data = json.loads((report / "report.json").read_text())
    judge = data["sections"]["win_rates"]["data"]["judges"][0]
    lengths = data["sections"]["lengths"]["data"]
    summary = {
        "pairs": n, "prompts": len(prompts), "eval_prompts": judge["n"],
        "win_rate": judge["win_rate"], "win": judge["win"]["value"], "tie": judge["tie"]["value"], "loss": judge["loss"]["value"],
        "mean_length_tuned": sum(lengths["model"]) / len(lengths["model"]),
        "mean_length_default": sum(lengths["baseline"]) / len(lengths["baseline"]), "length_unit": lengths.get("unit"),
        "seconds": {"data": round(t_data), "train": round(t_train), "total": round(time.time() - t0)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    wr = summary["win_rate"]
    print(f"win rate of the tuned model under the annotator's preference: {wr['value']:.3f} "
          f"(95% interval {wr['ci_low']:.3f}-{wr['ci_high']:.3f}; {'excludes' if wr['ci_low'] > 0.5 or wr['ci_high'] < 0.5 else 'includes'} 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
