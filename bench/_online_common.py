"""Shared pieces of the online-RL benchmarks: prompts, the transparent reward, timing preftune's loop, and each
side's share of the machine's peak (issue 18: :func:`share_of_peak`, :func:`compare_share`)."""

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
                           value_head: bool = False, decode_dtype: str = "auto", model: str | None = None) -> dict:
    """preftune's online loop on the default model (or ``model``); samples/s over ``steps`` steps (after one warm-up
    rollout). ``step_lengths``: each step's prompt and response token counts (the rollout's prompt ids and response
    ids, EOS included where it ended), ``timings_s``: each step's seconds unrounded, both for :func:`share_of_peak`."""
    from preftune.data.tokenize import encode_prompt
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.models.policy import value_head_for
    from preftune.rl.loop import OnlineSettings, OnlineTrainer
    from preftune.runs import RunDir

    tok = load_tokenizer(model)
    policy = load_model(model)
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
    rows, lengths = [], []
    t0 = time.perf_counter()
    for s in range(steps):
        rows.append(trainer.step(s))
        rollout = trainer._last_rollout
        lengths.append({"prompt": [len(x) for x in rollout.prompt_ids], "completion": [len(x) for x in rollout.sequences]})
    elapsed = time.perf_counter() - t0
    n = steps * num_prompts * num_samples
    return {"samples_per_s": n / elapsed, "seconds": elapsed, "samples": n,
            **steady_state([r["step_time_s"] for r in rows], num_prompts * num_samples), "single_pass": trainer.single_pass,
            "reference_pass": trainer.needs_reference, "decode_dtype": str(trainer.engine.decode_dtype or "model"),
            "sampler_logprob_gap": [round(r["sampler_logprob_gap"], 4) for r in rows],
            "reward_mean": [r["reward_mean"] for r in rows], "gen_tokens_per_s": [r["gen_tokens_per_s"] for r in rows],
            "step_breakdown_s": [{k: round(r[k], 2) for k in ("generate_s", "rollout_forward_s", "train_s", "step_time_s")}
                                 for r in rows],
            "step_lengths": lengths,
            "timings_s": [{k: r[k] for k in ("generate_s", "rollout_forward_s", "train_s", "step_time_s")} for r in rows]}


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
    generate, score and update inside it) and each call of the trainer's ``_generate``, and counts the prompt and
    completion tokens each call returns (TRL 1.x returns unpadded id lists, completions cut after EOS)."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.step_s: list[float] = []
        self.generate_s: list[float] = []
        self.lengths: list[dict] = []
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
                    out = generate(*args, **kwargs)
                finally:
                    self.generate_s.append(time.perf_counter() - t0)
                self.lengths.append(generated_lengths(out))
                return out

            trainer._generate = timed


def generated_lengths(out) -> dict | None:
    """``{"prompt": [...], "completion": [...]}`` token counts from TRL 1.x ``_generate``'s return value (prompt ids,
    completion ids, ...: lists of id lists); None when it has another form (then no token counts for that side)."""
    try:
        prompts, completions = out[0], out[1]
        return {"prompt": [len(x) for x in prompts], "completion": [len(x) for x in completions]}
    except (TypeError, IndexError, KeyError):
        return None


def share_of_peak(side: dict, shape, peak_gflops: float | None, *, reference_pass: bool, reward_model: bool,
                  epochs: int = 1) -> dict:
    """One side's achieved GFLOP/s and MFU, from the same model FLOPs for both sides of an online-RL bench.

    ``side`` carries ``step_lengths`` (per step ``{"prompt": [...], "completion": [...]}`` token counts of every
    sample) and ``step_seconds``, ``generate_seconds`` (per step), and for preftune ``train_seconds`` (its update
    alone). Per step the work counted (bench/_hardware.py) is the algorithm's, the same for both sides: generating
    the responses (2N per new token with attention over the cache), a forward pass over prompt + response for the
    reference model when the KL coefficient is on (``reference_pass``) and for a reward model when there is one
    (``reward_model``; a Python reward costs nothing), and ``epochs`` of training on prompt + response (6N per
    token). A side's extra work (TRL PPO's separate value network, an old-policy pass that one epoch of one
    minibatch does not need) is not counted. Steps 2..n when there are two or more (the first is each process's
    warm-up), else all. Returns ``{"measures", "tokens", "whole_step", "after_generation", "generation"[, "update"]}``,
    each measure from :func:`_hardware.rates`; ``after_generation`` is everything after the responses exist
    (scoring, reference and training): the split both sides' timings allow.
    """
    from _hardware import generation_flops, rates, sequences_forward_flops

    n = len(side["step_lengths"])
    first = 1 if n >= 2 else 0
    gen = fwd = train = 0.0
    prompt_tokens = completion_tokens = 0
    for lengths in side["step_lengths"][first:]:
        pairs = list(zip(lengths["prompt"], lengths["completion"], strict=True))
        seq = sequences_forward_flops(shape, [p + c for p, c in pairs])
        gen += sum(generation_flops(shape, p, c) for p, c in pairs)
        fwd += (int(reference_pass) + int(reward_model)) * seq
        train += epochs * 3 * seq
        prompt_tokens += sum(lengths["prompt"])
        completion_tokens += sum(lengths["completion"])
    step_s = sum(side["step_seconds"][first:])
    gen_s = sum(side["generate_seconds"][first:])
    out = {"measures": "steps 2..n" if first else "all steps",
           "tokens": {"prompt": prompt_tokens, "completion": completion_tokens, "steps": n - first},
           "whole_step": rates(gen + fwd + train, step_s, peak_gflops),
           "after_generation": rates(fwd + train, step_s - gen_s, peak_gflops),
           "generation": rates(gen, gen_s, peak_gflops)}
    if side.get("train_seconds") is not None:
        out["update"] = rates(train, sum(side["train_seconds"][first:]), peak_gflops)
    return out


def preftune_timings(ours: dict) -> dict:
    """The per-step figures :func:`share_of_peak` reads, from :func:`preftune_samples_per_s`'s result."""
    t = ours["timings_s"]
    return {"step_lengths": ours["step_lengths"], "step_seconds": [x["step_time_s"] for x in t],
            "generate_seconds": [x["generate_s"] for x in t], "train_seconds": [x["train_s"] for x in t]}


def trl_timings(theirs: dict) -> dict | None:
    """The per-step figures :func:`share_of_peak` reads, from a TRL side's result (``timings_s`` {"step",
    "generate"} and ``step_lengths``); None unless every step has one generation call with its token counts (then
    TRL's side gets no share rather than a guessed one)."""
    t, lengths = theirs["timings_s"], theirs["step_lengths"]
    if not (len(t["step"]) == len(t["generate"]) == len(lengths)) or None in lengths:
        return None
    return {"step_lengths": lengths, "step_seconds": t["step"], "generate_seconds": t["generate"]}


def compare_share(ours: dict, theirs: dict | None, name: str = "") -> dict:
    """Flat keys of the two sides' shares: ``preftune_{name}_mfu_update``, ``trl_{name}_mfu_after_generation``, ...
    (and ``*_achieved_gflops_*``) for every measure a side has."""
    tag = f"{name}_" if name else ""
    out = {}
    for side, share in (("preftune", ours), ("trl", theirs)):
        for measure in ("update", "after_generation", "whole_step", "generation"):
            if share and measure in share:
                out[f"{side}_{tag}achieved_gflops_{measure}"] = share[measure]["achieved_gflops"]
                out[f"{side}_{tag}mfu_{measure}"] = share[measure]["mfu"]
    return out
