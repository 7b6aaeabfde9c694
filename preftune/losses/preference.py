"""Offline preference losses (the DPO family), as pure functions of per-sequence log-probabilities.

Notation (all tensors ``[B]``, one entry per pair; fp32):

* ``π_w = log π_θ(y_w | x)``, ``π_l = log π_θ(y_l | x)``: summed log-probs of the chosen (winner) and rejected
  (loser) completions under the policy; ``r_w = log π_ref(y_w | x)``, ``r_l``: the same under the reference;
* ``|y_w|``, ``|y_l|``: completion lengths in tokens;
* ``h = (π_w − r_w) − (π_l − r_l)``: the difference of log-ratios, DPO's implicit reward margin divided by β.

Every loss returns a :class:`PreferenceLoss`: the batch-mean loss (0-d), per-pair losses, and the implicit
rewards of chosen and rejected (detached) that the metrics are made of. The losses are picked by name from
:data:`LOSSES` (``--loss NAME``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLoss:
    """``loss`` (0-d, the batch mean), ``losses`` ``[B]``, implicit ``chosen_rewards`` / ``rejected_rewards`` ``[B]``
    (detached; for KTO, desirable / undesirable), and any extra named scalars of the method."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def _out(losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, **extra) -> PreferenceLoss:
    return PreferenceLoss(losses.mean(), losses, chosen_rewards.detach(), rejected_rewards.detach(),
                          {k: v.detach() for k, v in extra.items()})


def _logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    return policy_chosen - ref_chosen, policy_rejected - ref_rejected


# -- losses with a reference model ------------------------------------------------------------------------


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             *, beta: float = 0.1, target: torch.Tensor | None = None) -> PreferenceLoss:
    """DPO, the sigmoid loss (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):

    .. math::  \\mathcal L = -\\log \\sigma(\\beta h), \\quad h = (π_w − r_w) − (π_l − r_l)

    Rewards: ``β (π_w − r_w)`` and ``β (π_l − r_l)``. The gradient raises ``π_w`` and lowers ``π_l``, weighted by
    ``σ(−βh)`` (how wrong the implicit reward model is).

    ``target`` ``[B]``: a soft label p = P(y_w ≻ y_l) per pair (e.g. from an AI labeller); the loss is the
    cross-entropy of the implicit Bradley–Terry model against it,
    ``−p log σ(βh) − (1−p) log σ(−βh)`` (:func:`preftune.losses.reward.soft_label_nll`): cDPO's label smoothing with
    a per-pair ε = 1 − p, and DPO itself at p = 1.
    """
    from preftune.losses.reward import soft_label_nll

    cw, cl = _logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _out(soft_label_nll(beta * (cw - cl), target), beta * cw, beta * cl)


def cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
              label_smoothing: float = 0.1, target: torch.Tensor | None = None) -> PreferenceLoss:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"): labels are
    assumed flipped with probability ε, so the target is the smoothed label:

    .. math::  \\mathcal L = -(1-ε)\\log σ(βh) - ε \\log σ(-βh)

    ``ε = 0`` is DPO. The loss is minimised at a finite ``βh = \\log((1-ε)/ε)``, so rewards stop growing.

    With a soft label p per pair (``target``), the flip noise applies to it: the target is ``(1−ε)p + ε(1−p)``.
    """
    cw, cl = _logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    z = beta * (cw - cl)
    if target is not None:
        from preftune.losses.reward import soft_label_nll

        p = target.to(z.dtype)
        return _out(soft_label_nll(z, (1 - label_smoothing) * p + label_smoothing * (1 - p)), beta * cw, beta * cl)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return _out(losses, beta * cw, beta * cl)


def robust_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
                    label_smoothing: float = 0.1) -> PreferenceLoss:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO", eq. 9): an unbiased estimate of the clean DPO loss
    under label flips with known rate ε < 1/2:

    .. math::  \\mathcal L = \\frac{(1-ε)\\,(-\\log σ(βh)) - ε\\,(-\\log σ(-βh))}{1 - 2ε}
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    cw, cl = _logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    z = beta * (cw - cl)
    losses = ((1 - label_smoothing) * -F.logsigmoid(z) - label_smoothing * -F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return _out(losses, beta * cw, beta * cl)


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, *,
             beta: float = 0.1, length_normalize: bool = True) -> PreferenceLoss:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17),
    with β in the role of the regulariser τ:

    .. math::  \\mathcal L = \\Big(h' - \\frac{1}{2β}\\Big)^2, \\quad
               h' = \\frac{π_w - r_w}{|y_w|} - \\frac{π_l - r_l}{|y_l|}

    A squared loss regresses the log-ratio gap to a finite target instead of pushing it to infinity (DPO's
    over-fitting on deterministic preferences). The per-token normalisation (``length_normalize``, default) is what
    the IPO authors used in practice and what TRL does; ``length_normalize=False`` uses summed log-ratios.
    """
    cw, cl = _logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if length_normalize:
        gap = cw / chosen_lengths.clamp(min=1) - cl / rejected_lengths.clamp(min=1)
    else:
        gap = cw - cl
    return _out((gap - 1 / (2 * beta)) ** 2, beta * cw, beta * cl)


def hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1) -> PreferenceLoss:
    """Hinge / SLiC (Zhao et al. 2023, "SLiC-HF", eq. 1 calibration loss; with reference-normalised log-probs as in
    Liu et al. 2024, RSO):

    .. math::  \\mathcal L = \\max(0,\\; 1 - βh)

    i.e. SLiC's ``max(0, δ − log π(y_w) + log π(y_l))`` on log-ratios with margin ``δ = 1/β`` (scaled by β).
    Pairs already separated by ``h ≥ 1/β`` give no gradient.
    """
    cw, cl = _logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return _out(torch.relu(1 - beta * (cw - cl)), beta * cw, beta * cl)


def rpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, *, beta: float = 0.1,
             alpha: float = 1.0) -> PreferenceLoss:
    """RPO: DPO plus a negative log-likelihood term on the chosen completion (Pang et al. 2024, "Iterative Reasoning
    Preference Optimization", eq. 1):

    .. math::  \\mathcal L = -\\log σ(βh) \\;-\\; α \\frac{π_w}{|y_w|}

    The NLL term keeps the chosen completions likely (plain DPO can lower both log-probs while widening their gap).
    Note: TRL's ``loss_type=["sigmoid", "sft"]`` averages the NLL over all chosen tokens of the batch instead of per
    sequence; the two agree when the chosen completions of a batch have equal lengths.
    """
    cw, cl = _logratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    dpo = -F.logsigmoid(beta * (cw - cl))
    nll = -policy_chosen / chosen_lengths.clamp(min=1)
    return _out(dpo + alpha * nll, beta * cw, beta * cl, nll=nll.mean())


# -- reference-free losses -------------------------------------------------------------------------------


def simpo_loss(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, *, beta: float = 2.0,
               gamma: float = 0.5) -> PreferenceLoss:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6):
    the reward is the length-normalised log-prob, no reference model, with a target margin γ:

    .. math::  \\mathcal L = -\\log σ\\Big(\\frac{β}{|y_w|} π_w - \\frac{β}{|y_l|} π_l - γ\\Big)

    Rewards: ``β π_w / |y_w|`` and ``β π_l / |y_l|``. (TRL's CPO trainer writes γ as ``simpo_gamma = γ`` too.)
    """
    rw = beta * policy_chosen / chosen_lengths.clamp(min=1)
    rl = beta * policy_rejected / rejected_lengths.clamp(min=1)
    return _out(-F.logsigmoid(rw - rl - gamma), rw, rl)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − e^x)`` for ``x < 0``, accurate on both sides of ``−ln 2`` (Mächler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, *, beta: float = 0.1) -> PreferenceLoss:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model", eqs. 6–7): SFT
    on the chosen completion plus an odds-ratio term, on length-normalised log-probs ``p̄ = π / |y|``:

    .. math::  \\mathcal L = \\underbrace{-\\bar p_w}_{\\text{NLL}}
               - λ \\log σ\\Big(\\log\\frac{\\mathrm{odds}_w}{\\mathrm{odds}_l}\\Big), \\quad
               \\log \\mathrm{odds} = \\bar p - \\log(1 - e^{\\bar p})

    with ``λ = beta`` (TRL's naming). Rewards (for logging): ``β p̄_w``, ``β p̄_l``. Extra: ``nll``, ``log_odds_ratio``.
    """
    mw = policy_chosen / chosen_lengths.clamp(min=1)
    ml = policy_rejected / rejected_lengths.clamp(min=1)
    log_odds = (mw - ml) - (log1mexp(mw) - log1mexp(ml))
    nll = -mw
    losses = nll - beta * F.logsigmoid(log_odds)
    return _out(losses, beta * mw, beta * ml, nll=nll.mean(), log_odds_ratio=log_odds.mean())


def cpo_loss(policy_chosen, policy_rejected, chosen_lengths, *, beta: float = 0.1, alpha: float = 1.0) -> PreferenceLoss:
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization", eq. 3–4): DPO with a uniform reference (so no
    reference model) plus a behaviour-cloning NLL on the chosen completion:

    .. math::  \\mathcal L = -\\log σ\\big(β π_w - β π_l\\big) \\;-\\; α \\frac{π_w}{|y_w|}

    (summed log-probs in the preference term, the per-token mean in the NLL term). Rewards: ``β π_w``, ``β π_l``.
    """
    pref = -F.logsigmoid(beta * (policy_chosen - policy_rejected))
    nll = -policy_chosen / chosen_lengths.clamp(min=1)
    return _out(pref + alpha * nll, beta * policy_chosen, beta * policy_rejected, nll=nll.mean())


# -- unpaired ----------------------------------------------------------------------------------------------


def kto_kl_estimate(policy_mismatched: torch.Tensor, ref_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point (Ethayarajh et al. 2024, eq. 8): ``z₀ = max(0, mean_j [log π_θ(y'_j|x_j) − log π_ref(y'_j|x_j)])``
    over completions y' paired with *other* prompts x (mismatched pairs), detached (no gradient flows through z₀)."""
    return (policy_mismatched - ref_mismatched).mean().clamp(min=0).detach()


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | float, *,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8), unpaired:

    .. math::  r = π - r_{ref}, \\qquad
               \\mathcal L = \\begin{cases} λ_D\\,(1 - σ(β(r - z_0))) & y \\text{ desirable} \\\\
                                           λ_U\\,(1 - σ(β(z_0 - r))) & y \\text{ undesirable} \\end{cases}

    ``policy``, ``ref``: ``[B]`` summed log-probs; ``desirable``: ``[B]`` bool; ``kl``: the reference point z₀
    (:func:`kto_kl_estimate`). ``chosen_rewards`` / ``rejected_rewards`` are ``β r`` of the desirable / undesirable
    examples (possibly of different sizes, possibly empty). The loss is the mean over all B examples.
    """
    desirable = desirable.bool()
    ratio = policy - ref
    kl = torch.as_tensor(kl, dtype=ratio.dtype, device=ratio.device)
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    rewards = beta * ratio
    return _out(losses, rewards[desirable], rewards[~desirable], kl=kl)


# -- the registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """A preference loss as ``--loss NAME`` sees it."""

    name: str
    fn: Callable[..., PreferenceLoss]
    paper: str
    reference: bool = True  # needs reference log-probs
    unpaired: bool = False  # trains on single completions with a good/bad label (KTO)
    default_beta: float = 0.1


LOSSES: dict[str, LossSpec] = {s.name: s for s in (
    LossSpec("sigmoid", dpo_loss, "DPO, Rafailov et al. 2023"),
    LossSpec("ipo", ipo_loss, "IPO, Azar et al. 2023"),
    LossSpec("cdpo", cdpo_loss, "conservative DPO, Mitchell 2023"),
    LossSpec("robust", robust_dpo_loss, "robust DPO, Chowdhury et al. 2024"),
    LossSpec("hinge", hinge_loss, "SLiC-HF hinge, Zhao et al. 2023"),
    LossSpec("rpo", rpo_loss, "RPO (DPO + NLL on chosen), Pang et al. 2024"),
    LossSpec("simpo", simpo_loss, "SimPO, Meng et al. 2024", reference=False, default_beta=2.0),
    LossSpec("orpo", orpo_loss, "ORPO, Hong et al. 2024", reference=False),
    LossSpec("cpo", cpo_loss, "CPO, Xu et al. 2024", reference=False),
    LossSpec("kto", kto_loss, "KTO, Ethayarajh et al. 2024", unpaired=True),
)}
ALIASES = {"dpo": "sigmoid", "slic": "hinge", "conservative": "cdpo"}


def get_loss(name: str) -> LossSpec:
    """The :class:`LossSpec` of ``--loss NAME`` (aliases: dpo → sigmoid, slic → hinge); unknown names raise ValueError."""
    key = ALIASES.get(name, name)
    if key not in LOSSES:
        import difflib

        close = difflib.get_close_matches(name, [*LOSSES, *ALIASES], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown loss '{name}'{hint} (choose from {', '.join(LOSSES)})")
    return LOSSES[key]


@dataclass
class PairLogps:
    """Per-pair inputs every paired loss draws from: policy (and reference) summed log-probs and lengths, ``[B]``."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    target: torch.Tensor | None = None  # soft labels P(chosen ≻ rejected) (None: hard pairs)


SOFT_LABEL_LOSSES = ("sigmoid", "cdpo")  # the losses that take a per-pair soft label


def paired_loss(name: str, x: PairLogps, *, beta: float | None = None, label_smoothing: float = 0.0,
                simpo_gamma: float = 0.5, rpo_alpha: float = 1.0, cpo_alpha: float = 1.0,
                ipo_length_normalize: bool = True) -> PreferenceLoss:
    """Dispatch ``--loss NAME`` over :class:`PairLogps` with the method's own knobs (β defaults per method)."""
    spec = get_loss(name)
    if spec.unpaired:
        raise ValueError(f"loss '{spec.name}' is unpaired; call kto_loss on single completions")
    b = spec.default_beta if beta is None else beta
    if spec.reference and (x.ref_chosen is None or x.ref_rejected is None):
        raise ValueError(f"loss '{spec.name}' needs reference log-probs")
    if x.target is not None and spec.name not in SOFT_LABEL_LOSSES:
        raise ValueError(f"loss '{spec.name}' takes hard pairs; soft labels work with {', '.join(SOFT_LABEL_LOSSES)}")
    ref = (x.policy_chosen, x.policy_rejected, x.ref_chosen, x.ref_rejected)
    match spec.name:
        case "sigmoid":
            return dpo_loss(*ref, beta=b, target=x.target)
        case "cdpo":
            return cdpo_loss(*ref, beta=b, label_smoothing=label_smoothing, target=x.target)
        case "robust":
            return robust_dpo_loss(*ref, beta=b, label_smoothing=label_smoothing)
        case "ipo":
            return ipo_loss(*ref, x.chosen_lengths, x.rejected_lengths, beta=b, length_normalize=ipo_length_normalize)
        case "hinge":
            return hinge_loss(*ref, beta=b)
        case "rpo":
            return rpo_loss(*ref, x.chosen_lengths, beta=b, alpha=rpo_alpha)
        case "simpo":
            return simpo_loss(x.policy_chosen, x.policy_rejected, x.chosen_lengths, x.rejected_lengths, beta=b, gamma=simpo_gamma)
        case "orpo":
            return orpo_loss(x.policy_chosen, x.policy_rejected, x.chosen_lengths, x.rejected_lengths, beta=b)
        case "cpo":
            return cpo_loss(x.policy_chosen, x.policy_rejected, x.chosen_lengths, beta=b, alpha=cpo_alpha)
    raise AssertionError(spec.name)  # pragma: no cover


def preference_metrics(out: PreferenceLoss) -> dict[str, float]:
    """rewards/chosen, rewards/rejected (means), rewards/margin (mean difference) and rewards/accuracy (fraction of
    pairs with chosen reward > rejected reward; for unpaired losses, whether the mean desirable reward is higher)."""
    c, r = out.chosen_rewards, out.rejected_rewards
    m: dict[str, float] = {}
    if c.numel():
        m["rewards/chosen"] = c.float().mean().item()
    if r.numel():
        m["rewards/rejected"] = r.float().mean().item()
    if c.shape == r.shape and c.numel():
        m["rewards/margin"] = (c - r).float().mean().item()
        m["rewards/accuracy"] = (c > r).float().mean().item()
    elif c.numel() and r.numel():
        m["rewards/margin"] = m["rewards/chosen"] - m["rewards/rejected"]
    for k, v in out.extra.items():
        m[k] = v.float().mean().item()
    return m
