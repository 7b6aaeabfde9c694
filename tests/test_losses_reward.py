"""Reward losses and metrics against hand-computed values (softplus(x) = log(1 + e^x), −log σ(x) = softplus(−x))."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.data.formats import Ranking
from preftune.losses.reward import (
    binary_cross_entropy_loss,
    binary_ece,
    bradley_terry_loss,
    multiclass_cross_entropy_loss,
    pairwise_accuracy,
    pairwise_ece,
    plackett_luce_loss,
    reward_centering_loss,
)

T = torch.tensor


def test_bradley_terry_value():
    # diffs r_w − r_l = [1, −2]: −log σ(1) = log(1 + e^−1) = 0.3132617, −log σ(−2) = log(1 + e^2) = 2.1269280
    # mean = 1.2200948
    loss = bradley_terry_loss(T([1.0, 0.0]), T([0.0, 2.0]))
    assert loss.item() == pytest.approx(1.2200948492805979, abs=1e-6)
    per = bradley_terry_loss(T([1.0, 0.0]), T([0.0, 2.0]), reduction="none")
    assert per.tolist() == pytest.approx([0.31326168751822286, 2.1269280110429727], abs=1e-6)


def test_bradley_terry_with_margin():
    # Llama 2: −log σ(r_w − r_l − m); m = [0.5, 0]: diffs [0.5, −2]: log(1 + e^−0.5) = 0.4740770, 2.1269280 → 1.3005025
    loss = bradley_terry_loss(T([1.0, 0.0]), T([0.0, 2.0]), margin=T([0.5, 0.0]))
    assert loss.item() == pytest.approx(1.3005024976115398, abs=1e-6)


def test_bradley_terry_gradient_sign():
    chosen, rejected = T([0.3], requires_grad=True), T([0.1], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    # d/dr_w −log σ(d) = −(1 − σ(d)) = −σ(−0.2) = −0.4501660; the rejected side gets the opposite
    assert chosen.grad.item() == pytest.approx(-0.45016600268752216, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.45016600268752216, abs=1e-6)


def test_reward_centering():
    # (1 + 0)^2 = 1, (0 + 2)^2 = 4 → mean 2.5
    assert reward_centering_loss(T([1.0, 0.0]), T([0.0, 2.0])).item() == pytest.approx(2.5)
    assert reward_centering_loss(T([1.0, -1.0]), T([-1.0, 1.0])).item() == 0.0


def test_plackett_luce_k3():
    # rewards best→worst [2, 1, 0]: −[(2 − log(e^2 + e + 1)) + (1 − log(e + 1)) + 0] = 0.4076058 + 0.3132617 = 0.7208677
    loss = plackett_luce_loss(T([[2.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.7208676519626029, abs=1e-6)


def test_plackett_luce_ragged_lengths_ignore_padding():
    # second ranking has K = 2: −log σ(0.5 − (−0.5)) = log(1 + e^−1) = 0.3132617; the 99 is padding
    per = plackett_luce_loss(T([[2.0, 1.0, 0.0], [0.5, -0.5, 99.0]]), lengths=T([3, 2]), reduction="none")
    assert per.tolist() == pytest.approx([0.7208676519626029, 0.31326168751822286], abs=1e-6)
    rewards = T([[0.5, -0.5, 99.0]], requires_grad=True)
    plackett_luce_loss(rewards, lengths=T([2])).backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[0, 2].item() == 0.0


def test_rankings_expanded_and_plackett_luce_agree_on_k2():
    ranking = Ranking("p", ("good", "bad"))
    pairs = ranking.to_pairs()
    assert [(p.chosen, p.rejected) for p in pairs] == [("good", "bad")]
    scores = {"good": 0.7, "bad": -0.4}
    bt = bradley_terry_loss(T([scores[p.chosen] for p in pairs]), T([scores[p.rejected] for p in pairs]))
    pl = plackett_luce_loss(T([[scores[r] for r in ranking.responses]]))
    assert bt.item() == pytest.approx(pl.item(), abs=1e-7)
    assert bt.item() == pytest.approx(math.log1p(math.exp(-1.1)), abs=1e-6)  # −log σ(1.1) = 0.2870011


def test_binary_cross_entropy():
    # z = 0, y = 1: −log σ(0) = log 2 = 0.6931472; z = 2, y = 0: −log(1 − σ(2)) = log(1 + e^2) = 2.1269280 → 1.4100376
    assert binary_cross_entropy_loss(T([0.0, 2.0]), T([1, 0])).item() == pytest.approx(1.410037595801459, abs=1e-6)


def test_multiclass_cross_entropy():
    # [0, 0, 0] label 1: log 3 = 1.0986123; [1, 0, 0] label 0: log(e + 2) − 1 = 0.5514447
    loss = multiclass_cross_entropy_loss(T([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), T([1, 0]), reduction="none")
    assert loss.tolist() == pytest.approx([1.0986122886681098, 0.5514447139320509], abs=1e-6)


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy(T([1.0, 2.0, 3.0]), T([0.0, 2.0, 4.0])) == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3


def test_binary_ece():
    # p = [0.95, 0.92, 0.85, 0.25, 0.5], y = [1, 1, 0, 0, 1], 5 bins of width 0.1 over [0.5, 1]
    # conf = [0.95, 0.92, 0.85, 0.75, 0.5]; correct = [1, 1, 0, 1, 0.5]
    # bin 4: {0.95, 0.92}: |1 − 0.935| = 0.065, weight 2/5; bin 3: {0.85}: |0 − 0.85|; bin 2: {0.75}: |1 − 0.75|;
    # bin 0: {0.5}: |0.5 − 0.5| = 0 → (2·0.065 + 0.85 + 0.25) / 5 = 0.246
    ece = binary_ece(T([0.95, 0.92, 0.85, 0.25, 0.5]), T([1, 1, 0, 0, 1]), n_bins=5)
    assert ece == pytest.approx(0.246, abs=1e-7)  # float32 inputs


def test_pairwise_ece():
    # σ(0) = 0.5 (tie: correct 0.5, conf 0.5 → 0); σ(log 3) = 0.75 correct; σ(−log 3) = 0.25 → conf 0.75, wrong
    # bin [0.7, 0.8): acc 0.5, conf 0.75 → 0.25 · 2/3 = 0.1666667
    ece = pairwise_ece(T([0.0, math.log(3), 0.0]), T([0.0, 0.0, math.log(3)]), n_bins=5)
    assert ece == pytest.approx(1 / 6, abs=1e-6)


def test_bad_reduction():
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        bradley_terry_loss(T([1.0]), T([0.0]), reduction="avg")
