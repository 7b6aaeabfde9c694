"""The reward–KL frontier: mean reward against KL(π ‖ π_ref) for several policies on the same prompts.

As in the DPO paper's frontier figure (Rafailov et al. 2023, §6.1, Fig. 2): each checkpoint samples responses
``y ~ π(·|x)`` for the same prompts; its point is (KL, mean reward) where

    KL(π ‖ π_ref) ≈ (1/N) Σ_i [log π(y_i|x_i) − log π_ref(y_i|x_i)]

the Monte-Carlo (k1) estimate over the sampled responses, with both sequence log-probs recomputed by the models
(summed over completion tokens). Unbiased for samples drawn at temperature 1 with no top-k / top-p truncation,
which is the default here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from preftune.errors import PreftuneError
from preftune.eval.stats import bootstrap_ci
from preftune.rewards.base import score_completions


def sampled_kl(policy_logprobs: Sequence[float], reference_logprobs: Sequence[float]) -> float:
    """Mean summed log-ratio ``mean_i (log π(y_i|x_i) − log π_ref(y_i|x_i))`` over ``[N]`` samples from π."""
    p = np.asarray(policy_logprobs, dtype=np.float64)
    r = np.asarray(reference_logprobs, dtype=np.float64)
    if p.shape != r.shape or p.size == 0:
        raise PreftuneError(f"sampled KL: {p.size} policy log-probs and {r.size} reference log-probs (need the same, > 0)")
    return float(np.mean(p - r))


@dataclass
class FrontierPoint:
    name: str
    kl: float
    kl_ci: tuple[float, float]
    mean_reward: float
    reward_ci: tuple[float, float]
    n: int
    mean_length: float

    def as_dict(self) -> dict:
        return asdict(self)


def frontier_point(name: str, policy_logprobs: Sequence[float], reference_logprobs: Sequence[float],
                   rewards: Sequence[float], lengths: Sequence[int], *, seed: int = 0) -> FrontierPoint:
    """One point from per-sample log-probs, rewards and lengths (all ``[N]``), with bootstrap intervals."""
    ratio = np.asarray(policy_logprobs, float) - np.asarray(reference_logprobs, float)
    rew = np.asarray(rewards, float)
    if rew.shape != ratio.shape:
        raise PreftuneError(f"frontier point {name}: {rew.size} rewards for {ratio.size} samples")
    return FrontierPoint(name, sampled_kl(policy_logprobs, reference_logprobs), bootstrap_ci(ratio, seed=seed),
                         float(rew.mean()), bootstrap_ci(rew, seed=seed), int(rew.size), float(np.mean(lengths)))


@torch.no_grad()
def sequence_logprobs(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], *,
                      pad_id: int, batch_size: int = 8) -> list[float]:
    """Summed log π(completion | prompt) for each pair of id lists, ``[N]``."""
    from preftune.models.logprobs import completion_logprobs, resolve_layout
    from preftune.models.packing import pack_completions

    layout = resolve_layout(model, "auto")
    device = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, len(prompt_ids), batch_size):
        batch = pack_completions(prompt_ids[s:s + batch_size], completion_ids[s:s + batch_size], pad_id=pad_id,
                                 layout=layout, max_row_tokens=2048).to(device)
        out.extend(completion_logprobs(model, batch).sums.float().cpu().tolist())
    return out


def evaluate_policy(name: str, policy, reference, tokenizer, prompts: Sequence, reward, params, *,
                    samples_per_prompt: int = 1, batch_size: int = 8, seed: int = 0,
                    decode_dtype: str = "auto") -> tuple[FrontierPoint, list[dict]]:
    """Sample from ``policy`` on ``prompts``, score with ``reward`` and both models; the point and the samples."""
    from preftune.data.tokenize import encode_prompt as encode
    from preftune.generation.engine import HFEngine

    prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    ids = [encode(tokenizer, p) for p in prompts]
    out = HFEngine(policy, tokenizer, batch_size=batch_size, desc=f"sampling {name}", decode_dtype=decode_dtype).generate(ids, params)
    completions = [list(s) for s in out.sequences]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep = [i for i, c in enumerate(completions) if c]
    if not keep:
        raise PreftuneError(f"frontier: {name} produced no tokens")
    lp_pi = sequence_logprobs(policy, [ids[i] for i in keep], [completions[i] for i in keep], pad_id=pad, batch_size=batch_size)
    lp_ref = sequence_logprobs(reference, [ids[i] for i in keep], [completions[i] for i in keep], pad_id=pad, batch_size=batch_size)
    kept_prompts = [prompts[i] for i in keep]
    kept_texts = [out.texts[i] for i in keep]
    rewards = score_completions(reward, kept_prompts, kept_texts, batch_size=batch_size).tolist()
    point = frontier_point(name, lp_pi, lp_ref, rewards, [len(completions[i]) for i in keep], seed=seed)
    samples = [{"prompt": p, "response": t, "reward": r, "log_ratio": a - b}
               for p, t, r, a, b in zip(kept_prompts, kept_texts, rewards, lp_pi, lp_ref)]
    return point, samples


def frontier_table(points: Sequence[FrontierPoint]) -> list[dict]:
    return [{"checkpoint": p.name, "KL": round(p.kl, 4), "KL 95% CI": f"[{p.kl_ci[0]:.3f}, {p.kl_ci[1]:.3f}]",
             "mean reward": round(p.mean_reward, 4), "reward 95% CI": f"[{p.reward_ci[0]:.3f}, {p.reward_ci[1]:.3f}]",
             "samples": p.n, "mean length": round(p.mean_length, 1)} for p in points]
