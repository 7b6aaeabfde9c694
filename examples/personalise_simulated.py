"""Personalise the default model to one annotator's taste, with a simulated annotator instead of a person.

The loop of the README's walk-through, end to end, through the code a human session runs (each step calls the
command's own ``run`` function with its typed config, not a shell):

1. ``preftune generate --num-samples 4``: 4 sampled candidates for each of 30 training prompts (starter:train);
2. ``preftune annotate serve``'s item loading: every pair of each prompt's distinct candidates becomes a pairwise item
   in a feedback database (assignments with a randomised left/right order);
3. a simulated annotator — :func:`prefers_shorter`, a plain function that prefers the *shorter* answer — answers every
   item as shown on screen, through :meth:`FeedbackStore.submit` (what the web app's ``POST /api/submit`` calls);
4. ``preftune annotate export --task pairwise`` writes the preference pairs (``pairs.jsonl``), and
   ``preftune dpo --data feedback.sqlite --lora --merge`` trains on the database itself (the same export rows);
5. ``preftune eval`` compares the tuned model with the default one on NEW prompts (starter:test, none of them in
   starter:train) under the same preference — ``reward:THIS_FILE:shorter_reward`` as a hard judge: the shorter answer
   wins, equal lengths tie — and the tuned model's win rate with its 95% bootstrap interval is printed.
   The default model against itself scores 0.5 by construction; a win rate whose interval excludes 0.5 is the
   personalisation effect.

Run (figures, time and CPU in BENCHMARKS.md, issue 13)::

    python examples/personalise_simulated.py --out runs/personalise
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # the checkout, when run from a clone without installing

DEFAULT_MODEL = "smollm2-135m-instruct"


def shorter_reward(prompts, responses):
    """The simulated annotator's taste as a reward (what the eval judge applies): minus the length in characters."""
    return [-float(len(r)) for r in responses]


def prefers_shorter(shown: list[str]) -> dict:
    """The simulated annotator's answer to a pairwise item as shown on screen ``[left, right]``: the shorter one (in
    characters), a tie when both are as long. The answer is in the app's terms (``choice`` left / right / tie)."""
    left, right = (len(t) for t in shown)
    return {"choice": "tie"} if left == right else {"choice": "left" if left < right else "right"}


@dataclass
class Settings:
    """Sizes of the loop (the defaults are the measured run of BENCHMARKS.md)."""

    model: str = DEFAULT_MODEL
    train_prompts: str = "starter:train"
    prompts: int = 30
    num_samples: int = 4
    candidate_tokens: int = 64
    temperature: float = 1.0
    max_steps: int = 45
    batch_size: int = 8
    learning_rate: float = 5e-4
    beta: float = 0.1
    eval_prompts: str = "starter:test"
    eval_limit: int | None = None
    eval_tokens: int = 128
    bootstrap_samples: int = 2000
    seed: int = 0


def generate_candidates(s: Settings, out: Path) -> Path:
    """Step 1: ``preftune generate --num-samples K --temperature T`` on the first ``s.prompts`` training prompts."""
    from preftune.commands.evaluate import GenerateConfig, run_generate

    path = out / "candidates.jsonl"
    run_generate(GenerateConfig(model=s.model, prompts=s.train_prompts, limit=s.prompts, num_samples=s.num_samples,
                                temperature=s.temperature, max_new_tokens=s.candidate_tokens, seed=s.seed,
                                output=str(path)))
    return path


def annotate(s: Settings, candidates: Path, db: Path, answer=prefers_shorter) -> int:
    """Steps 2–3: the items ``preftune annotate serve --tasks pairwise`` makes from the candidates (every pair of each
    prompt's distinct answers), answered one by one by ``answer`` as the page shows them. Returns how many."""
    from preftune.commands.annotate import ServeConfig, load_items
    from preftune.feedback.store import FeedbackStore

    if db.exists():
        db.unlink()
    store = FeedbackStore(db, seed=s.seed)
    k = s.num_samples
    load_items(ServeConfig(db=str(db), prompts=s.train_prompts, limit=s.prompts, candidates=str(candidates),
                           tasks=["pairwise"], pairs_per_prompt=max(1, k * (k - 1) // 2), seed=s.seed), store)
    annotator = store.authenticate(store.add_annotator("prefers-shorter"))
    n = 0
    while (item := store.next_assignment(annotator)) is not None:
        store.submit(annotator, f"simulated-{n:08d}", item.id, answer(item.shown_responses))
        n += 1
    store.close()
    return n


def export_pairs(db: Path, out: Path):
    """Step 4a: ``preftune annotate export --task pairwise``: preference rows (ties left out and counted)."""
    from preftune.feedback.export import write_export

    return write_export(db, "pairwise", out / "pairs.jsonl")


def train(s: Settings, db: Path, out: Path) -> Path:
    """Step 4b: ``preftune dpo --data feedback.sqlite --lora --merge`` from ``s.model``; returns the merged model."""
    from preftune.commands.offline import DPOConfig, run_dpo

    run = out / "dpo"
    run_dpo(DPOConfig(model=s.model, data=str(db), output_dir=str(run), lora=True, merge=True, max_steps=s.max_steps,
                      batch_size=s.batch_size, learning_rate=s.learning_rate, beta=s.beta, seed=s.seed))
    return run / "final"


def evaluate(s: Settings, tuned: Path, out: Path) -> dict:
    """Step 5: ``preftune eval`` of the tuned model against ``s.model`` on the held-out prompts, judged by the same
    preference (hard: the shorter answer wins); returns the judge's win / tie / loss and win rate with intervals."""
    from preftune.commands.evaluate import EvalConfig, run_eval

    report = out / "eval"
    run_eval(EvalConfig(model=str(tuned), baseline=s.model, prompts=s.eval_prompts, limit=s.eval_limit,
                        judges=[f"reward:{HERE}:shorter_reward"], judge_reward_mode="hard", max_new_tokens=s.eval_tokens,
                        text_metrics=False, bertscore=False, bootstrap_samples=s.bootstrap_samples, seed=s.seed,
                        output_dir=str(report)))
    data = json.loads((report / "report.json").read_text())
    judge = data["sections"]["win_rates"]["data"]["judges"][0]
    rows = [json.loads(line) for line in (report / "generations.jsonl").read_text().splitlines()]
    result = {"n": judge["n"], "win_rate": judge["win_rate"], "win": judge["win"]["value"], "tie": judge["tie"]["value"],
              "loss": judge["loss"]["value"]}
    result["mean_chars_tuned"] = sum(len(r["response"]) for r in rows) / len(rows)
    result["mean_chars_default"] = sum(len(r["baseline"]) for r in rows) / len(rows)
    return result


def personalise(s: Settings, out: Path) -> dict:
    """The whole loop; writes ``summary.json`` to ``out`` and returns it."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    candidates = generate_candidates(s, out)
    t1 = time.time()
    db = out / "feedback.sqlite"
    answered = annotate(s, candidates, db)
    exported = export_pairs(db, out)
    print(f"annotated {answered} pairwise items; exported {exported.summary()}")
    t2 = time.time()
    tuned = train(s, db, out)
    t3 = time.time()
    result = evaluate(s, tuned, out)
    t4 = time.time()
    summary = {"settings": asdict(s), "answered": answered, "pairs": len(exported.rows), "dropped": dict(exported.dropped),
               "eval": result, "seconds": {"candidates": round(t1 - t0), "annotate": round(t2 - t1), "dpo": round(t3 - t2),
                                           "eval": round(t4 - t3), "total": round(t4 - t0)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/personalise")
    for name, value in asdict(defaults).items():
        kind = type(value) if value is not None else int
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = vars(parser.parse_args(argv))
    out = Path(args.pop("out"))
    summary = personalise(Settings(**args), out)
    ev, wr = summary["eval"], summary["eval"]["win_rate"]
    verdict = "excludes" if wr["ci_low"] > 0.5 or wr["ci_high"] < 0.5 else "includes"
    print(f"tuned vs default on {ev['n']} new prompts, judged by the annotator's preference (shorter wins): "
          f"win {ev['win']:.3f}, tie {ev['tie']:.3f}, loss {ev['loss']:.3f}")
    print(f"win rate {wr['value']:.3f} (95% interval {wr['ci_low']:.3f}-{wr['ci_high']:.3f}; {verdict} 0.5; "
          f"the default model against itself: 0.5); {summary['seconds']['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
