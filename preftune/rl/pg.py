"""Critic-free policy gradients sharing one update: REINFORCE with a baseline, RLOO and GRPO.

Each turns the rollout's scores into one advantage per response, broadcast over its tokens, and
minimises the clipped surrogate of PPO (with one epoch and one minibatch the ratio is 1 and this is
exactly the REINFORCE gradient -A * grad log pi(y|x)):

* ``reinforce`` (Williams 1992): R = r - beta * sum_t KL_t, A = R - b with b an exponential moving average
  of past batches' mean R (a baseline independent of the current samples keeps the estimator unbiased).
* ``rloo`` (Ahmadian et al. 2024): the same R, A = R_i - mean_{j != i} R_j over the k samples of a prompt.
* ``grpo`` (Shao et al. 2024): A = (r_i - mean r) / (std r + eps) within each prompt's group, and the KL
  enters the *loss* instead of the reward: + beta * k3(pi || pi_ref) per token, averaged per response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.losses import policy as P
from preftune.rl.experience import Rollout
from preftune.models.policy import PolicyForward

METHODS = ("reinforce", "rloo", "grpo")


@dataclass
class PGSettings:
    method: str = "rloo"
    num_samples: int = 4
    kl_estimator: str = "k1"  # for the KL in the reward (REINFORCE / RLOO); GRPO always uses k3 in its loss
    clip_range: float = 0.2
    whiten: bool = False  # whiten the sequence advantages over the batch (REINFORCE / RLOO)
    no_eos_penalty: float = 0.0
    baseline_decay: float = 0.9  # REINFORCE's moving-average baseline
    scale_rewards: bool = True  # GRPO: divide by the group's std (False: Dr. GRPO)


def sequence_advantages(method: str, scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, k: int,
                        kl_coef: float, baseline: float | None = None, scale_rewards: bool = True) -> torch.Tensor:
    """One advantage per response [B] for ``method`` (see the module docstring). kl, mask: [B, T]."""
    if method == "grpo":
        return P.grpo_advantages(scores, k, scale=scale_rewards)
    penalized = P.kl_penalized_scores(scores, kl, mask, kl_coef)
    if method == "rloo":
        return P.rloo_advantages(penalized, k)
    if method == "reinforce":
        return P.reinforce_advantages(penalized, penalized.mean() if baseline is None else baseline)
    raise ValueError(f"unknown policy-gradient method '{method}' (choose from {', '.join(METHODS)})")


class PolicyGradient:
    """The REINFORCE / RLOO / GRPO algorithm object the online loop drives."""

    needs_values = False
    all_reduce = None  # set by the online loop under several processes: sums a tensor over them (global statistics)

    def __init__(self, settings: PGSettings):
        if settings.method not in METHODS:
            raise ValueError(f"unknown policy-gradient method '{settings.method}' (choose from {', '.join(METHODS)})")
        self.s = settings
        self.name = settings.method
        self.baseline: float | None = None

    def state_dict(self) -> dict:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        self.baseline = state.get("baseline")

    def prepare(self, rollout: Rollout, kl_coef: float) -> dict[str, float]:
        s = self.s
        mask = rollout.mask
        scores = P.missing_eos_penalty(rollout.scores, rollout.finished, s.no_eos_penalty) if s.no_eos_penalty else rollout.scores
        kl = P.kl_estimate(rollout.logprobs, rollout.ref_logprobs, s.kl_estimator) * mask
        reduce = self.all_reduce
        batch_mean = None
        if s.method == "reinforce":
            penalized = P.kl_penalized_scores(scores, kl, mask, kl_coef)
            batch_mean = float(penalized.mean() if reduce is None else self._global_mean(penalized))
        baseline = self.baseline if self.baseline is not None or reduce is None else batch_mean
        adv = sequence_advantages(s.method, scores, kl, mask, k=s.num_samples, kl_coef=kl_coef,
                                  baseline=baseline, scale_rewards=s.scale_rewards)
        if s.method == "reinforce":
            self.baseline = batch_mean if self.baseline is None else (
                s.baseline_decay * self.baseline + (1 - s.baseline_decay) * batch_mean)
        if s.whiten and s.method != "grpo":
            if reduce is None:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            else:  # the whole batch's mean and (unbiased) std, over every process's share
                mean = self._global_mean(adv)
                n = reduce(torch.tensor(float(adv.numel()), dtype=adv.dtype))
                std = (reduce(((adv - mean) ** 2).sum()) / (n - 1).clamp(min=1)).sqrt()
                adv = (adv - mean) / (std + 1e-8)
        rollout.advantages = adv
        if reduce is not None:  # the whole batch's
            return {"advantage_std": float(P.masked_var(adv, torch.ones_like(adv), all_reduce=reduce).sqrt())}
        return {"advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0}

    def _global_mean(self, x: torch.Tensor) -> torch.Tensor:
        sums = self.all_reduce(torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=x.dtype)]))
        return sums[0] / sums[1]

    def loss_units(self, rollout: Rollout, idx: torch.Tensor) -> float:
        """GRPO's loss is a mean over responses (each a mean over its tokens); the others' over response tokens."""
        return float(len(idx)) if self.s.method == "grpo" else float(rollout.mask[idx].sum())

    def loss(self, fwd: PolicyForward, rollout: Rollout, idx: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.s
        dev = fwd.logprobs.device
        width = fwd.logprobs.shape[1]
        mask = rollout.mask[idx, :width].to(dev)
        old = rollout.logprobs[idx, :width].to(dev)
        adv = rollout.advantages[idx].to(dev)
        if s.method == "grpo":
            ref = rollout.ref_logprobs[idx, :width].to(dev)
            loss, pg, kl = P.grpo_loss(fwd.logprobs, old, ref, adv, mask, s.clip_range, beta=kl_coef)
            return loss, {"policy_loss": float(pg.loss.detach()), "clip_frac": float(pg.clip_frac), "approx_kl": float(pg.approx_kl),
                          "kl_loss": float(kl)}
        pg = P.clipped_policy_loss(fwd.logprobs, old, adv, mask, s.clip_range)
        return pg.loss, {"policy_loss": float(pg.loss.detach()), "clip_frac": float(pg.clip_frac), "approx_kl": float(pg.approx_kl)}
