"""Online DPO: the offline DPO-family losses on pairs sampled from the current policy and labelled on the fly.

"Direct language model alignment from online AI feedback" (Guo et al. 2024, Algorithm 1): each step samples two
responses per prompt from the current policy, asks an annotator (an LLM, or here any reward) which is better, and
takes one DPO-family step on those pairs. With several optimizer steps per sampled batch it is the iterative
variant (a round = sample a batch, label it, train on it; Llama 2 / 3 style rounds, Xu et al. 2023 "Some things
are more cringe than others: iterative preference optimization").

This is an *algorithm* of the online loop (:class:`preftune.rl.loop.OnlineTrainer`), like PPO and GRPO: the loop
samples ``num_samples = 2`` responses per prompt with its engine, scores them with the reward interface, recomputes
log-probs of policy and reference, and calls ``on_policy_update`` after every optimizer step; this class only turns
the two scores of a pair into a label and the pair's log-probs into a loss of :mod:`preftune.losses.preference`.

Labels: with ``soft`` labels, P(a ≻ b) = σ(r_a − r_b) (the Bradley–Terry reading of the scores; the AI labeller's
reward, :class:`preftune.cai.label.PairwiseLabelReward`, is built so that this is its probability); with ``hard``
labels the higher score is chosen with probability 1, and a tie carries no preference (it gets weight 0).
The losses that take soft labels (sigmoid, cdpo) use p as the per-pair target; the others get the pair oriented by
the label, and ties weighted 0.

Log-probs are the loop's: tempered by the sampling temperature (the policy that drew the samples); at temperature 1
(the default of ``preftune dpo --online``) they are the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.errors import PreftuneError
from preftune.losses.preference import SOFT_LABEL_LOSSES, PairLogps, get_loss, paired_loss, preference_metrics
from preftune.rl.experience import Rollout
from preftune.models.policy import PolicyForward


@dataclass
class OnlineDPOSettings:
    loss: str = "sigmoid"
    beta: float | None = None  # default: the loss's own
    labels: str = "soft"  # soft: σ(r_a − r_b); hard: 1 for the higher score (ties: weight 0)
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    rpo_alpha: float = 1.0
    cpo_alpha: float = 1.0
    ipo_length_normalize: bool = True


def pair_targets(scores: torch.Tensor, labels: str = "soft") -> torch.Tensor:
    """P(a ≻ b) for pairs laid out (a, b) consecutively in ``scores`` [2N] → [N]."""
    diff = scores[0::2].double() - scores[1::2].double()
    if labels == "soft":
        return torch.sigmoid(diff).float()
    if labels == "hard":
        return torch.where(diff > 0, 1.0, torch.where(diff < 0, 0.0, 0.5)).float()
    raise PreftuneError(f"unknown label kind '{labels}' (soft or hard)")


class OnlineDPO:
    """The online DPO algorithm object the online loop drives (two samples per prompt, kept together)."""

    needs_values = False
    keeps_groups = 2  # minibatches hold whole pairs (see OnlineTrainer.update)

    def __init__(self, settings: OnlineDPOSettings):
        self.s = settings
        self.spec = get_loss(settings.loss)
        if self.spec.unpaired:
            raise PreftuneError(f"online DPO trains on pairs; the loss '{settings.loss}' is unpaired")
        self.beta = self.spec.default_beta if settings.beta is None else settings.beta
        self.name = f"online-dpo ({self.spec.name})"

    def prepare(self, rollout: Rollout, kl_coef: float) -> dict[str, float]:
        if len(rollout.sequences) % 2:
            raise PreftuneError("online DPO needs num_samples = 2 (a pair per prompt)")
        p = pair_targets(rollout.scores, self.s.labels)
        rollout.pair_targets = p
        confidence = (p - 0.5).abs() * 2
        return {"label_confidence": float(confidence.mean()), "label_ties": float((p == 0.5).float().mean()),
                "label_a_wins": float((p > 0.5).float().mean())}

    def loss_units(self, rollout: Rollout, idx: torch.Tensor) -> float:
        """The loss of minibatch ``idx`` is a mean over its pairs (hard labels: over its pairs that are not ties)."""
        p = rollout.pair_targets[idx.view(-1, 2)[:, 0] // 2]
        return float(len(p)) if self.spec.name in SOFT_LABEL_LOSSES else float((p != 0.5).sum())

    def loss(self, fwd: PolicyForward, rollout: Rollout, idx: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
        rows = idx.view(-1, 2)
        if not bool(((rows[:, 0] % 2 == 0) & (rows[:, 1] == rows[:, 0] + 1)).all()):
            raise PreftuneError("online DPO: a minibatch split a pair (minibatch_size must be even)")
        dev = fwd.logprobs.device
        width = fwd.logprobs.shape[1]
        mask = rollout.mask[idx, :width].to(dev).to(fwd.logprobs.dtype)
        seq = (fwd.logprobs * mask).sum(-1).view(-1, 2)  # [N, 2]
        ref = (rollout.ref_logprobs[idx, :width].to(dev) * mask).sum(-1).view(-1, 2)
        lengths = mask.sum(-1).view(-1, 2)
        p = rollout.pair_targets[rows[:, 0] // 2].to(dev)
        # orient every pair so that "chosen" is the labelled winner (a tie keeps a first)
        swap = p < 0.5
        order = torch.stack([swap.long(), 1 - swap.long()], 1)  # column of chosen, of rejected
        pick = lambda t: (t.gather(1, order[:, :1]).squeeze(1), t.gather(1, order[:, 1:]).squeeze(1))  # noqa: E731
        (pc, pr), (rc, rr), (lc, lr) = pick(seq), pick(ref), pick(lengths)
        target = torch.maximum(p, 1 - p)
        soft = self.spec.name in SOFT_LABEL_LOSSES
        weight = torch.ones_like(target) if soft else (target != 0.5).to(target.dtype)
        x = PairLogps(pc, pr, lc, lr, rc, rr, target if soft else None)
        s = self.s
        out = paired_loss(self.spec.name, x, beta=self.beta, label_smoothing=s.label_smoothing, simpo_gamma=s.simpo_gamma,
                          rpo_alpha=s.rpo_alpha, cpo_alpha=s.cpo_alpha, ipo_length_normalize=s.ipo_length_normalize)
        loss = (out.losses * weight).sum() / weight.sum().clamp(min=1)
        metrics = {"dpo_loss": float(loss.detach()), **preference_metrics(out)}
        return loss, metrics
