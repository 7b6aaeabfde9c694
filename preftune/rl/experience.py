"""Rollouts: generate -> reward -> log-probs (policy and reference) and values, recomputed by the training model.

One rollout is ``B = num_prompts * k`` responses, grouped prompt by prompt (sample j of prompt n at index
``n * k + j``; RLOO and GRPO rely on it). Everything per token is ``[B, T]``, right-padded, with
``mask`` 1 on real response tokens (the EOS included).

The sampler's own log-probs are *not* used as the "old" policy: the engine runs under
``inference_mode`` with a KV cache (and, elsewhere, maybe vLLM in another precision), so its numbers can
differ from the training forward pass. ``old_logprobs`` are recomputed here by the same forward code the
update uses, so that the PPO ratio is exactly 1 on the first minibatch. When the update is a single optimizer
step over the whole rollout (one epoch, one minibatch) the loop skips that pass and takes the old log-probs,
detached, from the training forward itself (:meth:`preftune.rl.loop.OnlineTrainer.update_single_pass`).

Every forward pass lays the k responses of a prompt out as one group ``[prompt, y_1, ..., y_k]`` with a block
mask (:func:`preftune.models.packing.pack_groups`), so the prompt is computed once per group, not k times,
and no padding is processed; the LM head runs only where a response token is predicted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from preftune.data.formats import Prompt
from preftune.errors import PreftuneError
from preftune.generation.engine import GenerationEngine, SamplingParams
from preftune.models.policy import policy_forward, response_mask
from preftune.models.reference import NO_REFERENCE, can_disable_adapters, reference_view


@dataclass
class Rollout:
    """One batch of experience. Per-token tensors are [B, T]; per-response [B]."""

    prompts: list  # the internal prompts, repeated k times (grouped)
    prompt_ids: list[list[int]]
    sequences: list[list[int]]  # response ids (EOS included when it ended there)
    texts: list[str]
    finished: torch.Tensor  # [B] bool: ended at EOS / a stop string
    mask: torch.Tensor  # [B, T]
    scores: torch.Tensor  # [B] reward from the reward function (before penalties)
    logprobs: torch.Tensor | None  # [B, T] old policy, recomputed (None until the training forward fills it)
    ref_logprobs: torch.Tensor | None  # [B, T] (None: no reference pass, the KL coefficient is 0)
    entropy: torch.Tensor | None  # [B, T]
    values: torch.Tensor | None = None  # [B, T] (PPO)
    advantages: torch.Tensor | None = None  # [B, T] (PPO) or [B] (critic-free)
    returns: torch.Tensor | None = None  # [B, T] (PPO)
    timings: dict = field(default_factory=dict)
    sampler_logprobs: list[list[float]] | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


def repeat_prompts(prompts: Sequence, k: int) -> list:
    """[p0, p0, ..., p1, p1, ...]: each item k times, grouped."""
    return [p for p in prompts for _ in range(k)]


def chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def collect_rollout(*, policy, reference: Callable, engine: GenerationEngine, reward_fn: Callable,
                    prompts: Sequence[Prompt], prompt_ids: Sequence[list[int]], params: SamplingParams, k: int,
                    pad_id: int, value_head=None, critic=None, forward_batch_size: int = 16, policy_pass: bool = True,
                    reference_pass: bool = True) -> Rollout:
    """Generate k responses per prompt, score them, and recompute old / reference log-probs (and values).

    ``reference(prompt_ids, sequences) -> [B, T]`` gives the reference log-probs (a frozen copy, or the
    policy with its LoRA adapters switched off). ``policy_pass=False`` leaves ``logprobs`` / ``entropy`` /
    ``values`` to the caller (the single-pass update takes them from its own training forward);
    ``reference_pass=False`` skips the reference (``ref_logprobs`` None: a KL coefficient of 0 needs none).
    Forward passes run ``forward_batch_size`` responses at a time, rounded to whole groups of k.
    """
    prompts_k = repeat_prompts(prompts, k)
    ids_k = repeat_prompts(prompt_ids, k)
    t0 = time.perf_counter()
    gen = engine.generate(ids_k, params)
    t_gen = time.perf_counter() - t0
    sequences = gen.sequences
    t1 = time.perf_counter()
    scores = reward_fn(prompts_k, gen.texts).float().cpu()
    t_rew = time.perf_counter() - t1
    t2 = time.perf_counter()
    temperature = params.temperature if not params.greedy else 1.0
    parts = {"logprobs": [], "ref": [], "entropy": [], "values": []}
    step = max(k, forward_batch_size // k * k)
    for rows in chunks(len(sequences), step) if (policy_pass or reference_pass) else []:
        p = [ids_k[i] for i in rows]
        s = [sequences[i] for i in rows]
        if policy_pass:
            out = policy_forward(policy, p, s, pad_id=pad_id, temperature=temperature, value_head=value_head,
                                 critic=critic, with_entropy=True)
            parts["logprobs"].append(out.logprobs)
            parts["entropy"].append(out.entropy)
            if out.values is not None:
                parts["values"].append(out.values)
        if reference_pass:
            parts["ref"].append(reference(p, s))
    width = max(len(s) for s in sequences)

    def cat(xs):
        if not xs:
            return None
        return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in xs]).cpu()

    mask = response_mask(sequences)
    rollout = Rollout(
        prompts=prompts_k, prompt_ids=ids_k, sequences=sequences, texts=gen.texts,
        finished=torch.tensor(gen.finished, dtype=torch.bool), mask=mask, scores=scores,
        logprobs=cat(parts["logprobs"]), ref_logprobs=cat(parts["ref"]), entropy=cat(parts["entropy"]),
        values=cat(parts["values"]), sampler_logprobs=gen.logprobs,
    )
    rollout.timings = {"generate_s": t_gen, "reward_s": t_rew, "forward_s": time.perf_counter() - t2,
                       "generated_tokens": sum(len(s) for s in sequences)}
    return rollout


def make_reference(policy, ref_model=None, *, pad_id: int, temperature: float = 1.0) -> Callable:
    """The reference log-prob function (per token, as :func:`policy_forward`): π_ref of
    :func:`preftune.models.reference.reference_view`, a frozen ``ref_model`` or the LoRA policy with adapters off."""
    if ref_model is None and not can_disable_adapters(policy):
        raise PreftuneError(NO_REFERENCE)

    def reference_logprobs(prompt_ids, sequences):
        with reference_view(policy, ref_model) as ref:
            return policy_forward(ref, prompt_ids, sequences, pad_id=pad_id, temperature=temperature).logprobs

    return reference_logprobs
