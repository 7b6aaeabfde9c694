"""The slow correctness check of online RL (issue 6): on the default model with a trained reward model, a short PPO
run raises the reward-model score of held-out prompts over the starting (SFT) model, without collapsing.

    flock /tmp/preftune_heavy.lock .venv/bin/preftune reward --data starter:train --output-dir RM --max-steps 24 \\
        --batch-size 8 --learning-rate 2e-5 --max-length 512 --skip-bad-rows
    OMP_NUM_THREADS=2 flock /tmp/preftune_heavy.lock .venv/bin/python bench/ppo_rm_check.py --reward RM/final --json OUT

Trains PPO (value head, k1 KL penalty to a frozen copy of the start model, GAE, whitening, clipping) on the prompts
of starter:train, then samples the held-out starter:test prompts with the start model and with the trained policy
(the same seeds and sampling settings) and scores both with the reward model. Writes the mean scores, their paired
difference with its standard error (per prompt), text statistics that would show a collapse (distinct bigrams, the
share of the most frequent token, length), and a before/after sample table (``--samples-md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch


def text_stats(sequences: list[list[int]], texts: list[str]) -> dict:
    """Collapse detectors: distinct bigrams over all words, mean share of each response's most frequent token, length."""
    bigrams, total = set(), 0
    for t in texts:
        w = t.split()
        pairs = list(zip(w, w[1:]))
        bigrams.update(pairs)
        total += len(pairs)
    top_share = [Counter(s).most_common(1)[0][1] / len(s) for s in sequences if s]
    return {"distinct_2": len(bigrams) / max(total, 1), "top_token_share": sum(top_share) / max(len(top_share), 1),
            "mean_tokens": sum(map(len, sequences)) / max(len(sequences), 1)}


def evaluate(model, tok, reward, prompts, ids, *, samples: int, max_new_tokens: int, temperature: float, seed: int) -> dict:
    from preftune.generation import HFEngine, SamplingParams

    engine = HFEngine(model, tok, batch_size=32, show_progress=False)
    rep_ids = [p for p in ids for _ in range(samples)]
    rep_prompts = [p for p in prompts for _ in range(samples)]
    out = engine.generate(rep_ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))
    scores = reward(rep_prompts, out.texts).float()
    return {"scores": scores, "per_prompt": scores.view(-1, samples).mean(-1), "texts": out.texts,
            "stats": text_stats(out.sequences, out.texts)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reward", required=True, help="a reward-model folder saved by `preftune reward`")
    ap.add_argument("--json", required=True)
    ap.add_argument("--samples-md", default=None)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--learning-rate", type=float, default=1e-5)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--minibatch-size", type=int, default=4)
    ap.add_argument("--eval-samples", type=int, default=2)
    ap.add_argument("--eval-temperature", type=float, default=0.7)
    ap.add_argument("--test-limit", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)

    from preftune.commands.online import load_prompts
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.rewards.loading import load_reward
    from preftune.models.policy import value_head_for
    from preftune.rl.loop import OnlineSettings, OnlineTrainer
    from preftune.rl.ppo import PPO, PPOSettings
    from preftune.runs import RunDir, read_metrics

    tok = load_tokenizer()
    reward = load_reward(args.reward)

    def prompt_set(name: str, limit: int | None):
        cfg = SimpleNamespace(prompts=name, prompts_format="auto", limit=limit, chat_template=True, max_prompt_length=512)
        return load_prompts(cfg, tok)

    train_prompts, train_ids = prompt_set("starter:train", None)
    test_prompts, test_ids = prompt_set("starter:test", args.test_limit)
    policy = load_model()
    start = copy.deepcopy(policy).requires_grad_(False).eval()
    ev = dict(samples=args.eval_samples, max_new_tokens=args.max_new_tokens, temperature=args.eval_temperature, seed=1234)
    before = evaluate(start, tok, reward, test_prompts, test_ids, **ev)
    print("before", json.dumps({"score": float(before["scores"].mean()), **before["stats"]}), flush=True)

    settings = OnlineSettings(steps=args.steps, batch_size=args.batch_size, num_samples=1, max_new_tokens=args.max_new_tokens,
                              temperature=1.0, ppo_epochs=args.ppo_epochs, minibatch_size=args.minibatch_size,
                              learning_rate=args.learning_rate, kl_coef=args.kl_coef, sample_every=max(args.steps // 2, 1),
                              seed=0, gen_batch_size=32)
    run = RunDir(tempfile.mkdtemp(prefix="ppo-rm-check-"))
    trainer = OnlineTrainer(policy=policy, tokenizer=tok, algorithm=PPO(PPOSettings()), reward_fn=reward,
                            prompts=train_prompts, prompt_ids=train_ids, settings=settings, run=run, ref_model=start,
                            value_head=value_head_for(policy.config.hidden_size))
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    rows = read_metrics(run.path)
    after = evaluate(policy, tok, reward, test_prompts, test_ids, **ev)
    diff = after["per_prompt"] - before["per_prompt"]
    se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    result = {
        "settings": vars(args) | {"train_prompts": len(train_prompts), "test_prompts": len(test_prompts)},
        "before_score": float(before["scores"].mean()), "after_score": float(after["scores"].mean()),
        "delta": float(diff.mean()), "delta_se": se, "delta_z": float(diff.mean()) / se if se > 0 else float("nan"),
        "prompts_improved": int((diff > 0).sum()), "before_stats": before["stats"], "after_stats": after["stats"],
        "train_seconds": train_s,
        "train_curve": [{k: round(r[k], 4) for k in ("reward_mean", "kl", "entropy", "response_length", "clip_frac",
                                                      "value_loss", "explained_variance") if k in r} for r in rows],
        "run_dir": str(run.path),
    }
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("train_curve", "settings")}, indent=1))
    if args.samples_md:
        from preftune.data.formats import prompt_text

        def cell(x: str) -> str:
            return x.replace("|", "\\|").replace("\n", "<br>")

        lines = ["| prompt | start model (score) | after PPO (score) |", "|---|---|---|"]
        for i in range(min(8, len(test_prompts))):
            j = i * args.eval_samples
            lines.append(f"| {cell(prompt_text(test_prompts[i]))} | {cell(before['texts'][j])} ({before['scores'][j]:.2f}) "
                         f"| {cell(after['texts'][j])} ({after['scores'][j]:.2f}) |")
        Path(args.samples_md).write_text("\n".join(lines) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
