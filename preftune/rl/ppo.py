"""PPO for RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022): how a rollout becomes
per-token advantages, and the loss of one minibatch.

Per token t of response y to prompt x:

    r_t = -beta * KL_t(pi || pi_ref)            (k1 by default; k2 / k3 on request)
    r_T += RM(x, y)  (minus ``no_eos_penalty`` when y ran out of tokens without EOS)
    A, R = GAE(r, V; gamma, lambda)              (advantages whitened over the batch when ``whiten``)
    loss = clipped surrogate(A) + vf_coef * clipped value loss(V, R)   (+ the PPO-ptx term, in the loop)

The KL coefficient beta comes from a fixed or an adaptive controller (Ziegler et al. 2019, sec. 2.2),
updated once per rollout with the measured KL. The loop (:mod:`preftune.rl.loop`) runs ``ppo_epochs``
passes of shuffled minibatches over each rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.losses import policy as P
from preftune.rl.experience import Rollout
from preftune.models.policy import PolicyForward


@dataclass
class PPOSettings:
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip: float | None = 0.2
    vf_coef: float = 0.1
    whiten: bool = True  # whiten advantages over the rollout
    no_eos_penalty: float = 0.0


class PPO:
    """The PPO algorithm object the online loop drives (needs values: a value head or a critic)."""

    name = "ppo"
    needs_values = True
    all_reduce = None  # set by the online loop under several processes: sums a tensor over them (global whitening)

    def __init__(self, settings: PPOSettings):
        self.s = settings

    def prepare(self, rollout: Rollout, kl_coef: float) -> dict[str, float]:
        """Fill ``rollout.advantages`` / ``returns`` (both [B, T]); return the rollout's metrics."""
        s = self.s
        mask = rollout.mask
        kl = P.kl_estimate(rollout.logprobs, rollout.ref_logprobs, s.kl_estimator) * mask
        scores = P.missing_eos_penalty(rollout.scores, rollout.finished, s.no_eos_penalty) if s.no_eos_penalty else rollout.scores
        rewards = P.kl_shaped_rewards(scores, kl, mask, kl_coef)
        adv, ret = P.gae(rewards, rollout.values, mask, s.gamma, s.lam)
        if s.whiten:
            adv = P.masked_whiten(adv, mask, all_reduce=self.all_reduce)
        rollout.advantages, rollout.returns = adv, ret
        return {
            "non_score_reward": float(P.masked_sum(-kl_coef * kl, mask, dim=-1).mean()),
            "explained_variance": float(P.explained_variance(rollout.values, ret, mask, all_reduce=self.all_reduce)),
            "value_mean": float(P.masked_mean(rollout.values, mask)),
            "return_mean": float(P.masked_mean(ret, mask)),
        }

    def loss_units(self, rollout: Rollout, idx: torch.Tensor) -> float:
        """The loss of minibatch ``idx`` is a mean over its response tokens (policy and value terms alike)."""
        return float(rollout.mask[idx].sum())

    def loss(self, fwd: PolicyForward, rollout: Rollout, idx: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of minibatch ``idx`` (rows of the rollout) from a fresh forward pass ``fwd`` over them."""
        s = self.s
        dev = fwd.logprobs.device
        width = fwd.logprobs.shape[1]
        mask = rollout.mask[idx, :width].to(dev)
        pick = lambda x: x[idx, :width].to(dev)  # noqa: E731
        pg = P.clipped_policy_loss(fwd.logprobs, pick(rollout.logprobs), pick(rollout.advantages), mask, s.clip_range)
        vloss, vclip = P.clipped_value_loss(fwd.values, pick(rollout.values), pick(rollout.returns), mask, s.value_clip)
        loss = pg.loss + s.vf_coef * vloss
        return loss, {"policy_loss": float(pg.loss.detach()), "value_loss": float(vloss.detach()), "clip_frac": float(pg.clip_frac),
                      "value_clip_frac": float(vclip), "approx_kl": float(pg.approx_kl)}
