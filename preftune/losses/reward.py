"""Reward-model losses and metrics, as pure functions of reward tensors.

Notation: ``r_w`` (chosen, "winner") and ``r_l`` (rejected, "loser") are scalar rewards, one per pair, shape ``[N]``.
All losses return the mean over the batch (a 0-d tensor) unless ``reduction="none"`` (then ``[N]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NEG = -1e9  # stands for −∞ in masked Plackett–Luce positions (finite, so no NaN gradients)


def _reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    if reduction == "none":
        return per_item
    raise ValueError(f"unknown reduction '{reduction}' (mean, sum or none)")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       reduction: str = "mean", target: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley–Terry pairwise loss, with an optional per-pair margin.

    .. math::  \\mathcal L = -\\log \\sigma\\big(r_w - r_l - m\\big)

    With ``m = 0`` this is the negative log-likelihood of the Bradley–Terry model
    P(w ≻ l) = σ(r_w − r_l) (Bradley & Terry 1952), the reward-model loss of InstructGPT (Ouyang et al. 2022, eq. 1).
    A per-pair margin ``m ≥ 0`` (Llama 2, Touvron et al. 2023, eq. 2) asks for a larger gap on pairs the
    annotators rated as clearly different.

    With a soft label ``target`` p = P(w ≻ l) per pair (an AI labeller's probability, Bai et al. 2022 §4.1; the
    cross-entropy against the label's distribution rather than a hard 1):

    .. math::  \mathcal L = -p \log \sigma(x) - (1 - p) \log \sigma(-x), \quad x = r_w - r_l - m

    which at p = 1 is the loss above, and with a constant p = 1 − ε is label smoothing.

    Shapes: ``chosen``, ``rejected``, ``margin``, ``target``: ``[N]``. ``−log σ(x)`` is computed as ``softplus(−x)`` (stable).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return _reduce(soft_label_nll(diff, target), reduction)


def soft_label_nll(x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item ``−p log σ(x) − (1 − p) log σ(−x)`` (``softplus`` form); ``target`` p ``[N]`` (None: p = 1, i.e.
    ``−log σ(x)``). The binary cross-entropy of the logit x against a soft label: for a preference pair with
    P(w ≻ l) = p, the loss of the Bradley–Terry model (reward models) and of DPO's implicit reward (DPO with a soft
    label, which is label smoothing per pair: ε = 1 − p, as in cDPO, Mitchell 2023). Shapes ``[N]``."""
    if target is None:
        return F.softplus(-x)
    p = target.to(x.dtype)
    return p * F.softplus(-x) + (1 - p) * F.softplus(x)


def reward_centering_loss(chosen: torch.Tensor, rejected: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The reward-centring auxiliary term (Eisenstein et al. 2023, "Helping or Herding?", §3):

    .. math::  \\mathcal L_{centre} = (r_w + r_l)^2

    Bradley–Terry only fixes reward differences; this pushes the mean reward of each pair to 0, so rewards are
    comparable across prompts and models. Added to the main loss times a coefficient (e.g. 0.01). Shapes ``[N]``.
    """
    return _reduce((chosen + rejected) ** 2, reduction)


def plackett_luce_loss(rewards: torch.Tensor, lengths: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Listwise Plackett–Luce negative log-likelihood of full rankings (Plackett 1975; Luce 1959; used for reward
    models by Zhu et al. 2023, "Principled RLHF from Pairwise or K-wise Comparisons").

    ``rewards[n, i]`` is the reward of the response ranked ``i``-th (0 = best) in ranking ``n``; ``lengths[n] = K_n``
    (rankings shorter than the widest are padded on the right; their padding is ignored). Per ranking:

    .. math::  \\mathcal L = -\\sum_{i=1}^{K} \\Big( r_i - \\log \\sum_{j=i}^{K} e^{r_j} \\Big)

    (the ``i = K`` term is 0). For ``K = 2`` it equals the Bradley–Terry loss ``−log σ(r_1 − r_2)``.

    Shapes: ``rewards`` ``[N, K]``, ``lengths`` ``[N]`` (default: all ``K``); returns ``[N]`` or a scalar.
    """
    n, k = rewards.shape
    if lengths is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    else:
        valid = torch.arange(k, device=rewards.device)[None, :] < lengths.to(rewards.device)[:, None]
    r = rewards.masked_fill(~valid, _NEG)
    # log Σ_{j ≥ i} exp(r_j): a cumulative logsumexp from the right
    tail_lse = torch.logcumsumexp(r.flip(-1), dim=-1).flip(-1)
    terms = torch.where(valid, r - tail_lse, torch.zeros_like(r))
    return _reduce(-terms.sum(-1), reduction)


def binary_cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy for rule-violation models (Sparrow, Glaese et al. 2022, §2.3):

    .. math::  \\mathcal L = -\\big[y \\log \\sigma(z) + (1-y) \\log(1-\\sigma(z))\\big]

    ``z`` = logit that the response *follows* the rule, ``y ∈ {0, 1}`` (1 = followed). Shapes ``[N]``.
    """
    return _reduce(F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none"), reduction)


def multiclass_cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Multi-class cross-entropy (e.g. the kind of a refusal: complied / refused / refused with a reason):

    .. math::  \\mathcal L = -\\log \\frac{e^{z_y}}{\\sum_c e^{z_c}}

    Shapes: ``logits`` ``[N, C]``, ``labels`` ``[N]`` (class indices, int64).
    """
    return _reduce(F.cross_entropy(logits, labels.long(), reduction="none"), reduction)


# -- metrics ------------------------------------------------------------------------------------------


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Fraction of pairs with ``r_w > r_l``; a tie counts one half. Shapes ``[N]``."""
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return wins.mean().item()


def binary_ece(prob_positive: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> float:
    """Expected calibration error of a binary predictor (Guo et al. 2017, eq. 3, on the predicted class).

    Confidence ``c = max(p, 1 − p)``; the prediction is correct when ``(p > 0.5) == y`` (``p = 0.5`` counts one half).
    Confidences fall in ``[0.5, 1]``, cut into ``n_bins`` equal-width bins ``[0.5 + b·w, 0.5 + (b+1)·w)``
    (the last one closed), ``w = 0.5 / n_bins``:

    .. math::  \\mathrm{ECE} = \\sum_b \\frac{|B_b|}{N} \\,\\big|\\,\\mathrm{acc}(B_b) - \\mathrm{conf}(B_b)\\big|

    Shapes: ``prob_positive``, ``labels`` ``[N]``.
    """
    p = prob_positive.double().flatten()
    y = labels.double().flatten()
    conf = torch.maximum(p, 1 - p)
    correct = torch.where(p == 0.5, torch.full_like(p, 0.5), ((p > 0.5).double() == y).double())
    bins = ((conf - 0.5) / (0.5 / n_bins)).floor().clamp(0, n_bins - 1).long()
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.double().mean().item() * abs(correct[in_bin].mean().item() - conf[in_bin].mean().item())
    return ece


def pairwise_ece(chosen: torch.Tensor, rejected: torch.Tensor, n_bins: int = 10) -> float:
    """Calibration of the Bradley–Terry probability ``P(w ≻ l) = σ(r_w − r_l)``: :func:`binary_ece` with every
    label 1 (the chosen response is the preferred one). Shapes ``[N]``."""
    return binary_ece(torch.sigmoid(chosen - rejected), torch.ones_like(chosen), n_bins)
