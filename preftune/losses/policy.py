"""Online RL as pure tensor functions: KL estimators, shaped rewards, GAE, PPO / GRPO / REINFORCE / RLOO.

Shapes: ``B`` sequences (responses), ``T`` response tokens (right-padded), ``mask`` [B, T] is 1 on real
response tokens (the EOS included) and 0 on padding. ``logprobs`` are log pi(y_t | x, y_<t) of the
response tokens. Nothing here touches a model; the RL loops in :mod:`preftune.rl` call these.

Sources:
  Schulman, "Approximating KL divergence" (blog, 2020): the k1, k2, k3 estimators.
  Ziegler et al. 2019, "Fine-tuning language models from human preferences": KL-penalised reward
    R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)) and the adaptive KL controller (section 2.2).
  Ouyang et al. 2022 (InstructGPT), eq. (2): the same reward plus gamma * E_pretrain[log pi(x)] (PPO-ptx).
  Schulman et al. 2016, "High-dimensional continuous control using GAE": eq. (16).
  Schulman et al. 2017, "Proximal policy optimization algorithms": eq. (7) (clipped surrogate), eq. (9).
  Williams 1992 (REINFORCE); Ahmadian et al. 2024, "Back to basics" (RLOO), eq. (9).
  Shao et al. 2024, "DeepSeekMath" (GRPO), eqs. (3)-(4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


# -- masked statistics ----------------------------------------------------------------------------------

def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1 (over ``dim``, or everything)."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 where a row has none)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over processes (a batch split across them)


def _sum(x: torch.Tensor, all_reduce: Reduce | None) -> torch.Tensor:
    return x if all_reduce is None else all_reduce(x)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, all_reduce: Reduce | None = None) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (Bessel-corrected when ``unbiased``); with ``all_reduce``, of every
    process's entries."""
    m = mask.to(x.dtype)
    sums = _sum(torch.stack([(x * m).sum(), m.sum()]), all_reduce)
    n = sums[1]
    mean = sums[0] / n.clamp(min=1)
    var = _sum((((x - mean) ** 2) * m).sum(), all_reduce) / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (var unbiased); with ``shift_mean=False`` the
    mean is added back (scale only, as for rewards). Padding positions come back as 0.

    ``all_reduce`` (sums a tensor over processes) takes mean and variance over every process's entries: the
    whitening of the whole batch when it is split across processes."""
    if all_reduce is None:
        mean = masked_mean(x, mask)
    else:
        m = mask.to(x.dtype)
        sums = all_reduce(torch.stack([(x * m).sum(), m.sum()]))
        mean = sums[0] / sums[1].clamp(min=1)
    var = masked_var(x, mask, all_reduce=all_reduce)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# -- KL and shaped rewards ------------------------------------------------------------------------------

def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020). [B, T] -> [B, T].

    With log r = log pi_ref(y_t) - log pi(y_t):
      k1 = -log r                 (unbiased, high variance, can be negative)
      k2 = (log r)^2 / 2          (biased, low variance, >= 0)
      k3 = (r - 1) - log r        (unbiased, low variance, >= 0; GRPO's choice)
    """
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator '{estimator}' (choose from {', '.join(KL_ESTIMATORS)})")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 of each row of a right-padded mask [B, T] -> [B] (0 for an empty row)."""
    return (mask.long().sum(-1) - 1).clamp(min=0)


def kl_shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards r_t = -beta * KL_t, plus the reward-model score at the last response token.

    Ziegler et al. 2019 sec. 2.2; Ouyang et al. 2022 eq. (2). scores [B], kl [B, T], mask [B, T] -> [B, T]
    (0 on padding).
    """
    rewards = -kl_coef * kl * mask.to(kl.dtype)
    idx = last_token_index(mask)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), idx] += scores.to(rewards.dtype)
    return rewards


def kl_penalized_scores(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Sequence-level reward R = r - beta * sum_t KL_t (the KL penalty of RLOO / REINFORCE). [B] -> [B]."""
    return scores - kl_coef * masked_sum(kl, mask, dim=-1)


def missing_eos_penalty(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every response that ended without EOS (``finished`` False). [B] -> [B]."""
    return scores - penalty * (~finished.bool()).to(scores.dtype)


# -- advantages -----------------------------------------------------------------------------------------

def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over right-padded responses.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last real token is 0: the episode ends there),
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages [B, T], returns = A + V [B, T]), 0 on padding.
    """
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[-1]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = a
        # on padding, carry nothing back (the next real position sees V = 0, A = 0)
        next_adv, next_value = a, values[:, t]
    return adv, (adv + values) * m


def reinforce_advantages(scores: torch.Tensor, baseline: torch.Tensor | float) -> torch.Tensor:
    """REINFORCE with a baseline (Williams 1992): A = R - b. scores [B] -> [B]."""
    return scores - baseline


def rloo_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 9): A_i = R_i - mean_{j != i} R_j over the k samples of a prompt.

    ``scores`` [N * k], grouped prompt by prompt (sample j of prompt n at n * k + j) -> [N * k].
    Equivalent to k / (k - 1) * (R_i - mean_j R_j).
    """
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (num_samples >= 2)")
    g = scores.view(-1, k)
    baseline = (g.sum(-1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


def grpo_advantages(scores: torch.Tensor, k: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO outcome advantages (Shao et al. 2024, sec. 4.1.2): A_i = (R_i - mean(R)) / (std(R) + eps) per group.

    std is the unbiased sample std of the k rewards of a prompt; ``scale=False`` keeps only the centring
    (Dr. GRPO, Liu et al. 2025). scores [N * k] grouped prompt by prompt -> [N * k].
    """
    if k < 2:
        raise ValueError("GRPO needs at least 2 samples per prompt (num_samples >= 2)")
    g = scores.view(-1, k)
    adv = g - g.mean(-1, keepdim=True)
    if scale:
        adv = adv / (g.std(-1, keepdim=True) + eps)
    return adv.reshape(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       all_reduce: Reduce | None = None) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over masked tokens (1: perfect critic, <= 0: useless)."""
    var_r = masked_var(returns, mask, all_reduce=all_reduce)
    return 1 - masked_var(returns - values, mask, all_reduce=all_reduce) / var_r.clamp(min=1e-8)


# -- losses -----------------------------------------------------------------------------------------------

@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # scalar
    clip_frac: torch.Tensor  # fraction of tokens whose ratio was clipped (the gradient is zero there)
    approx_kl: torch.Tensor  # mean of k3(old -> new), how far this update moved from the sampling policy
    ratio_mean: torch.Tensor


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_range: float = 0.2, aggregate: str = "token") -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    rho_t = exp(logp_t - logp_old_t); L_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)).
    ``advantages`` [B, T] per token, or [B] per sequence (broadcast over its tokens).
    ``aggregate="token"``: mean over all real tokens of the batch; ``"sequence"``: mean over each
    response's tokens, then over responses (GRPO eq. 3's 1/|o_i|).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    loss = _aggregate(per_token, mask, aggregate)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(per_token.dtype), mask)
        approx_kl = masked_mean(torch.expm1(-log_ratio) + log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLossOutput(loss, clip_frac, approx_kl, ratio_mean)


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregate: str) -> torch.Tensor:
    if aggregate == "token":
        return masked_mean(per_token, mask)
    if aggregate == "sequence":
        return masked_mean(per_token, mask, dim=-1).mean()
    raise ValueError(f"unknown aggregate '{aggregate}' (token or sequence)")


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float | None = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO value loss with clipping around the rollout's values (Schulman et al. 2017, as in OpenAI baselines).

    L = 1/2 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2); ``clip_range=None``:
    the plain 1/2 * (V - R)^2. Returns (loss, fraction of tokens where the clipped term was larger).
    """
    err = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * masked_mean(err, mask), torch.zeros((), dtype=values.dtype)
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    err_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        frac = masked_mean((err_clipped > err).to(values.dtype), mask)
    return loss, frac


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_range: float = 0.2, beta: float = 0.04, aggregate: str = "sequence"
              ) -> tuple[torch.Tensor, PolicyLossOutput, torch.Tensor]:
    """GRPO objective (Shao et al. 2024, eq. 3) as a loss: the clipped surrogate with sequence advantages plus
    beta * KL(pi || pi_ref) estimated per token with k3 (eq. 4), averaged per response then over responses.

    Returns (loss, the surrogate's PolicyLossOutput, mean per-token k3 KL).
    """
    pg = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range, aggregate)
    kl = kl_estimate(logprobs, ref_logprobs, "k3")
    kl_term = _aggregate(kl, mask, aggregate)
    return pg.loss + beta * kl_term, pg, kl_term.detach()


def ptx_loss(pretrain_logprobs: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """PPO-ptx (Ouyang et al. 2022, eq. 2): the objective adds gamma * E[log pi(x_pretrain)]; as a loss,
    -coef * mean of the per-token log-likelihood of pretraining/SFT tokens. [B, T] -> scalar."""
    return -coef * masked_mean(pretrain_logprobs, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution of each position: logsumexp(z) - sum softmax(z) * z. [..., V] -> [...]."""
    logits = logits.float()
    p = logits.softmax(-1)
    return torch.logsumexp(logits, -1) - (p * logits).sum(-1)


# -- KL controllers ---------------------------------------------------------------------------------------

class FixedKLController:
    """A constant beta."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Adaptive beta (Ziegler et al. 2019, sec. 2.2): e = clip(KL / KL_target - 1, -0.2, 0.2),
    beta <- beta * (1 + K_beta * e) with K_beta = n_steps / horizon (n_steps: samples in this batch)."""

    def __init__(self, kl_coef: float, target: float, horizon: int = 10000):
        super().__init__(kl_coef)
        if target <= 0:
            raise ValueError("the adaptive KL target must be > 0")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        if math.isfinite(current_kl):
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
