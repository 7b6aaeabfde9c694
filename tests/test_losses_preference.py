"""Every preference loss against numbers worked out by hand, its gradient sign, and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.losses.preference import (
    LOSSES,
    PairLogps,
    cdpo_loss,
    cpo_loss,
    dpo_loss,
    get_loss,
    hinge_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_loss,
    paired_loss,
    preference_metrics,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)
from preftune.losses.sft import sft_loss


def softplus(x: float) -> float:  # −log σ(−x)
    return math.log1p(math.exp(x))


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# Two pairs. Policy log-probs π_w = [−10, −6], π_l = [−12, −5]; reference r_w = [−11, −6], r_l = [−11, −6];
# lengths |y_w| = [4, 2], |y_l| = [5, 2]. Log-ratios: chosen [1, 0], rejected [−1, 1]; h = [2, −1].
PW, PL, RW, RL = t(-10, -6), t(-12, -5), t(-11, -6), t(-11, -6)
LW, LL = t(4, 2), t(5, 2)
BETA = 0.5  # βh = [1, −0.5]


def approx(values):
    return pytest.approx(values, abs=1e-5)


def test_dpo_sigmoid():
    out = dpo_loss(PW, PL, RW, RL, beta=BETA)
    # −log σ(1) = softplus(−1) = 0.313262; −log σ(−0.5) = softplus(0.5) = 0.974077
    assert out.losses.tolist() == approx([softplus(-1), softplus(0.5)])
    assert out.loss.item() == approx((softplus(-1) + softplus(0.5)) / 2)
    assert out.chosen_rewards.tolist() == approx([0.5, 0.0])  # β·(π_w − r_w)
    assert out.rejected_rewards.tolist() == approx([-0.5, 0.5])
    m = preference_metrics(out)
    assert m == approx({"rewards/chosen": 0.25, "rewards/rejected": 0.0, "rewards/margin": 0.25, "rewards/accuracy": 0.5})


def test_cdpo_label_smoothing():
    out = cdpo_loss(PW, PL, RW, RL, beta=BETA, label_smoothing=0.1)
    # 0.9·softplus(−z) + 0.1·softplus(z), z = [1, −0.5]
    assert out.losses.tolist() == approx([0.9 * softplus(-1) + 0.1 * softplus(1), 0.9 * softplus(0.5) + 0.1 * softplus(-0.5)])
    assert cdpo_loss(PW, PL, RW, RL, beta=BETA, label_smoothing=0.0).loss.item() == approx(dpo_loss(PW, PL, RW, RL, beta=BETA).loss.item())


def test_robust_dpo():
    out = robust_dpo_loss(PW, PL, RW, RL, beta=BETA, label_smoothing=0.1)
    # (0.9·softplus(−z) − 0.1·softplus(z)) / 0.8
    assert out.losses.tolist() == approx([(0.9 * softplus(-1) - 0.1 * softplus(1)) / 0.8,
                                          (0.9 * softplus(0.5) - 0.1 * softplus(-0.5)) / 0.8])
    with pytest.raises(ValueError, match=r"robust DPO needs 0 <= label_smoothing < 0.5, got 0.5"):
        robust_dpo_loss(PW, PL, RW, RL, label_smoothing=0.5)


def test_ipo():
    out = ipo_loss(PW, PL, RW, RL, LW, LL, beta=BETA)
    # per-token gap: [1/4 − (−1/5), 0/2 − 1/2] = [0.45, −0.5]; target 1/(2β) = 1 → [(−0.55)², (−1.5)²]
    assert out.losses.tolist() == approx([0.3025, 2.25])
    raw = ipo_loss(PW, PL, RW, RL, LW, LL, beta=BETA, length_normalize=False)
    assert raw.losses.tolist() == approx([(2 - 1) ** 2, (-1 - 1) ** 2])


def test_hinge():
    out = hinge_loss(PW, PL, RW, RL, beta=BETA)
    assert out.losses.tolist() == approx([0.0, 1.5])  # max(0, 1 − z)


def test_rpo():
    out = rpo_loss(PW, PL, RW, RL, LW, beta=BETA, alpha=1.0)
    # DPO + α·(−π_w/|y_w|) = DPO + [10/4, 6/2]
    assert out.losses.tolist() == approx([softplus(-1) + 2.5, softplus(0.5) + 3.0])
    assert out.extra["nll"].item() == approx(2.75)


def test_simpo():
    out = simpo_loss(PW, PL, LW, LL, beta=2.0, gamma=0.5)
    # rewards β·π/|y|: chosen 2·[−10/4, −6/2] = [−5, −6]; rejected 2·[−12/5, −5/2] = [−4.8, −5]
    # −log σ(r_w − r_l − γ) = softplus(−(−0.2 − 0.5)) = softplus(0.7); softplus(1.5)
    assert out.chosen_rewards.tolist() == approx([-5.0, -6.0])
    assert out.rejected_rewards.tolist() == approx([-4.8, -5.0])
    assert out.losses.tolist() == approx([softplus(0.7), softplus(1.5)])


def test_orpo():
    out = orpo_loss(PW, PL, LW, LL, beta=BETA)
    # mean log-probs p̄_w = [−2.5, −3], p̄_l = [−2.4, −2.5]; log odds(p) = p − log(1 − e^p)
    def log_odds(p):
        return p - math.log(1 - math.exp(p))

    lo = [log_odds(-2.5) - log_odds(-2.4), log_odds(-3.0) - log_odds(-2.5)]
    # loss = NLL (−p̄_w) + λ·softplus(−log_odds_ratio)
    assert out.losses.tolist() == approx([2.5 + 0.5 * softplus(-lo[0]), 3.0 + 0.5 * softplus(-lo[1])])
    assert out.extra["log_odds_ratio"].item() == approx(sum(lo) / 2)
    assert out.chosen_rewards.tolist() == approx([-1.25, -1.5])  # β·p̄_w


def test_cpo():
    out = cpo_loss(PW, PL, LW, beta=BETA, alpha=1.0)
    # −log σ(β(π_w − π_l)) = softplus(−0.5·[2, −1]) = softplus([−1, 0.5]); NLL = [2.5, 3]
    assert out.losses.tolist() == approx([softplus(-1) + 2.5, softplus(0.5) + 3.0])
    assert out.chosen_rewards.tolist() == approx([-5.0, -3.0])  # β·π_w


def test_kto():
    # π = [−10, −6, −12], r = [−11, −6, −11] → r_θ = [1, 0, −1]; desirable, desirable, undesirable; z₀ = 0.2, β = 0.5
    out = kto_loss(t(-10, -6, -12), t(-11, -6, -11), torch.tensor([True, True, False]), 0.2, beta=BETA,
                   desirable_weight=1.0, undesirable_weight=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [1 - sig(0.5 * (1 - 0.2)), 1 - sig(0.5 * (0 - 0.2)), 2.0 * (1 - sig(0.5 * (0.2 + 1)))]
    assert out.losses.tolist() == approx(expected)
    assert out.chosen_rewards.tolist() == approx([0.5, 0.0]) and out.rejected_rewards.tolist() == approx([-0.5])
    m = preference_metrics(out)
    assert m["rewards/margin"] == approx(0.25 - (-0.5)) and "rewards/accuracy" not in m and m["kl"] == approx(0.2)
    # z₀ = max(0, mean(π' − r')) over mismatched pairs: mean([1, −0.4]) = 0.3; a negative mean clamps to 0
    assert kto_kl_estimate(t(-3, -5), t(-4, -4.6)).item() == approx(0.3)
    assert kto_kl_estimate(t(-5), t(-4)).item() == 0.0


CASES = {
    "sigmoid": lambda pw, pl: dpo_loss(pw, pl, RW, RL, beta=BETA),
    "cdpo": lambda pw, pl: cdpo_loss(pw, pl, RW, RL, beta=BETA, label_smoothing=0.1),
    "robust": lambda pw, pl: robust_dpo_loss(pw, pl, RW, RL, beta=BETA, label_smoothing=0.1),
    "ipo": lambda pw, pl: ipo_loss(pw, pl, RW, RL, LW, LL, beta=BETA),
    "hinge": lambda pw, pl: hinge_loss(pw, pl, RW, RL, beta=0.1),  # β = 0.1: both pairs inside the margin
    "rpo": lambda pw, pl: rpo_loss(pw, pl, RW, RL, LW, beta=BETA),
    "simpo": lambda pw, pl: simpo_loss(pw, pl, LW, LL),
    "orpo": lambda pw, pl: orpo_loss(pw, pl, LW, LL),
    "cpo": lambda pw, pl: cpo_loss(pw, pl, LW),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_raises_chosen_and_lowers_rejected(name):
    pw, pl = PW.clone().requires_grad_(), PL.clone().requires_grad_()
    CASES[name](pw, pl).loss.backward()
    # Gradient descent moves π_w up (∂L/∂π_w < 0) and π_l down (∂L/∂π_l > 0) for every pair.
    assert (pw.grad < 0).all() and (pl.grad > 0).all(), (pw.grad, pl.grad)


def test_kto_gradient_sign():
    policy = t(-10, -12).requires_grad_()
    kto_loss(policy, t(-11, -11), torch.tensor([True, False]), 0.0).loss.backward()
    assert policy.grad[0] < 0 < policy.grad[1]


def test_registry_and_dispatch():
    assert set(LOSSES) == {"sigmoid", "ipo", "cdpo", "robust", "hinge", "rpo", "simpo", "orpo", "cpo", "kto"}
    assert get_loss("dpo").name == "sigmoid" and get_loss("slic").name == "hinge"
    assert not get_loss("simpo").reference and get_loss("kto").unpaired and get_loss("simpo").default_beta == 2.0
    with pytest.raises(ValueError, match=r"^unknown loss 'simp'; did you mean 'simpo'\? \(choose from sigmoid, ipo"):
        get_loss("simp")
    x = PairLogps(PW, PL, LW, LL, RW, RL)
    assert paired_loss("dpo", x, beta=BETA).loss.item() == approx(dpo_loss(PW, PL, RW, RL, beta=BETA).loss.item())
    assert paired_loss("simpo", x).loss.item() == approx(simpo_loss(PW, PL, LW, LL, beta=2.0, gamma=0.5).loss.item())
    with pytest.raises(ValueError, match="loss 'ipo' needs reference log-probs"):
        paired_loss("ipo", PairLogps(PW, PL, LW, LL))


def test_sft_loss_normalisations():
    logps, segments = t(-1, -2, -3, -0.5), torch.tensor([0, 0, 0, 1])
    assert sft_loss(logps, segments, 2).item() == approx(6.5 / 4)  # token mean
    assert sft_loss(logps, segments, 2, normalize="sequences").item() == approx((6 / 3 + 0.5) / 2)
