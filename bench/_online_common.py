"""Shared pieces of the online-RL benchmarks: prompts, the transparent reward, and timing preftune's loop."""

from __future__ import annotations

import copy
import tempfile
import time

QUESTIONS = [
    "How do I bake bread at home?", "What is the capital of France?", "Write a haiku about rain.",
    "Explain photosynthesis briefly.", "Give me three tips for sleeping better.", "What is 17 times 23?",
    "How can I learn Python quickly?", "Tell me a joke about cats.", "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet.", "What should I pack for a weekend hike?", "How do vaccines work?",
    "Suggest a name for a coffee shop.", "What is the difference between weather and climate?",
    "How do I change a flat tyre?", "Write a short thank-you note to a teacher.", "What is a black hole?",
    "How do I make a budget?", "Name three famous painters.", "What causes earthquakes?", "How do I boil an egg?",
    "What is machine learning?", "Give me a packing list for a beach trip.", "Why do cats purr?",
    "What is the tallest mountain?", "How can I be more productive?", "Explain gravity to a child.",
    "What is the boiling point of water?", "Recommend a good book.", "How do plants drink water?",
    "What is an API?", "How do I start running?",
]


def text_of(completion) -> str:
    """TRL passes conversational completions as lists of messages."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return completion


def polite_reward(prompts, completions, **kwargs):
    """A transparent reward, the same for both sides: +1 per 'please'/'thank'/'happy'/'help', minus |words - 40| / 40."""
    out = []
    for c in completions:
        t = text_of(c).lower()
        words = len(t.split())
        out.append(sum(t.count(w) for w in ("please", "thank", "happy", "help")) - abs(words - 40) / 40)
    return out


def preftune_samples_per_s(algorithm, *, num_prompts: int, num_samples: int, max_new_tokens: int, steps: int,
                           minibatch_size: int, ppo_epochs: int = 1, learning_rate: float = 1e-6, kl_coef: float = 0.05,
                           value_head: bool = False, decode_dtype: str = "auto") -> dict:
    """preftune's online loop on the default model; samples/s over ``steps`` steps (after one warm-up rollout)."""
    from preftune.data.tokenize import encode_prompt
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.rl.experience import value_head_for
    from preftune.rl.loop import OnlineSettings, OnlineTrainer
    from preftune.runs import RunDir

    tok = load_tokenizer()
    policy = load_model()
    ref = copy.deepcopy(policy).requires_grad_(False)
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS[:num_prompts]]
    ids = [encode_prompt(tok, p) for p in prompts]
    settings = OnlineSettings(steps=steps, batch_size=num_prompts, num_samples=num_samples, max_new_tokens=max_new_tokens,
                              temperature=1.0, ppo_epochs=ppo_epochs, minibatch_size=minibatch_size,
                              learning_rate=learning_rate, kl_coef=kl_coef, sample_every=0, seed=0,
                              gen_batch_size=num_prompts * num_samples, forward_batch_size=16,
                              decode_dtype=decode_dtype)
    head = value_head_for(policy.config.hidden_size) if value_head else None
    reward = lambda p, r: polite_reward(p, r)  # noqa: E731
    trainer = OnlineTrainer(policy=policy, tokenizer=tok, algorithm=algorithm, reward_fn=reward, prompts=prompts,
                            prompt_ids=ids, settings=settings, run=RunDir(tempfile.mkdtemp()), ref_model=ref,
                            value_head=head)
    rows = []
    t0 = time.perf_counter()
    for s in range(steps):
        rows.append(trainer.step(s))
    elapsed = time.perf_counter() - t0
    n = steps * num_prompts * num_samples
    return {"samples_per_s": n / elapsed, "seconds": elapsed, "samples": n,
            **steady_state([r["step_time_s"] for r in rows], num_prompts * num_samples), "single_pass": trainer.single_pass,
            "reference_pass": trainer.needs_reference, "decode_dtype": str(trainer.engine.decode_dtype or "model"),
            "sampler_logprob_gap": [round(r["sampler_logprob_gap"], 4) for r in rows],
            "reward_mean": [r["reward_mean"] for r in rows], "gen_tokens_per_s": [r["gen_tokens_per_s"] for r in rows],
            "step_breakdown_s": [{k: round(r[k], 2) for k in ("generate_s", "rollout_forward_s", "train_s", "step_time_s")}
                                 for r in rows]}


def steady_state(step_seconds: list[float], samples_per_step: int) -> dict:
    """Samples/s over every step after the first (the process's warm-up step); empty with fewer than two steps."""
    later = step_seconds[1:]
    if not later:
        return {}
    return {"steady_samples_per_s": samples_per_step * len(later) / sum(later), "steady_seconds": sum(later)}


def compare(ours: dict, theirs: dict, name: str = "") -> dict:
    """The ratio keys of a benchmark result: steady-state rates when both sides ran two steps or more, else all
    steps; the all-steps ratio beside it. ``name`` prefixes the keys ("rloo" gives "rloo_ratio", ...)."""
    tag = f"{name}_" if name else ""
    steady = "steady_samples_per_s" in ours and "steady_samples_per_s" in theirs
    key = "steady_samples_per_s" if steady else "samples_per_s"
    return {f"{tag}ratio": ours[key] / theirs[key], f"{tag}ratio_measures": "steps 2..n" if steady else "all steps",
            f"{tag}ratio_all_steps": ours["samples_per_s"] / theirs["samples_per_s"],
            f"preftune_{tag}samples_per_s": ours[key], f"trl_{tag}samples_per_s": theirs[key]}


class StepTimer:
    """Times each optimizer step of a transformers ``Trainer`` (on_step_begin to on_step_end: TRL's online trainers
    generate, score and update inside it) and each call of the trainer's ``_generate``."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.step_s: list[float] = []
        self.generate_s: list[float] = []
        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.step_s.append(time.perf_counter() - timer._t0)

        trainer.add_callback(_Callback())
        generate = getattr(trainer, "_generate", None)
        if generate is not None:
            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return generate(*args, **kwargs)
                finally:
                    self.generate_s.append(time.perf_counter() - t0)

            trainer._generate = timed
