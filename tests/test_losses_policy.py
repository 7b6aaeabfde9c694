"""Pure RL functions against values worked out by hand (each computation is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.losses import policy as P

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_masked_statistics():
    x = T([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    m = T([[1, 1, 1], [1, 0, 0]])
    # masked entries: 1, 2, 3, 4 -> mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5 -> var 5/3 unbiased
    assert close(P.masked_mean(x, m), 2.5)
    assert close(P.masked_mean(x, m, dim=-1), [2.0, 4.0])
    assert close(P.masked_var(x, m), 5 / 3)
    assert close(P.masked_var(x, m, unbiased=False), 1.25)
    assert close(P.masked_sum(x, m, dim=-1), [6.0, 4.0])


def test_masked_whiten():
    x = T([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    m = T([[1, 1, 1], [1, 0, 0]])
    s = math.sqrt(5 / 3)  # mean 2.5, unbiased std sqrt(5/3) = 1.2910
    w = P.masked_whiten(x, m, eps=0.0)
    assert close(w, [[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]])
    w2 = P.masked_whiten(x, m, shift_mean=False, eps=0.0)  # scale only: mean added back
    assert close(w2[0], [-1.5 / s + 2.5, -0.5 / s + 2.5, 0.5 / s + 2.5])


def test_kl_estimators():
    # log pi = log 0.5, log pi_ref = log 0.25 -> log r = log(0.25 / 0.5) = -log 2 = -0.693147, r = 0.5
    lp, ref = T([[math.log(0.5)]]), T([[math.log(0.25)]])
    assert close(P.kl_estimate(lp, ref, "k1"), [[math.log(2)]])  # -log r = 0.693147
    assert close(P.kl_estimate(lp, ref, "k2"), [[0.5 * math.log(2) ** 2]])  # 0.240227
    assert close(P.kl_estimate(lp, ref, "k3"), [[0.5 - 1 + math.log(2)]])  # (r - 1) - log r = 0.193147
    # equal distributions: all three are 0
    for est in P.KL_ESTIMATORS:
        assert close(P.kl_estimate(lp, lp, est), [[0.0]])
    with pytest.raises(ValueError, match="unknown KL estimator 'k4' \\(choose from k1, k2, k3\\)"):
        P.kl_estimate(lp, ref, "k4")


def test_kl_estimators_unbiased_on_exact_expectation():
    # pi = [0.5, 0.5], ref = [0.9, 0.1]: KL(pi||ref) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.510826
    pi, ref = T([0.5, 0.5]), T([0.9, 0.1])
    true_kl = (pi * (pi / ref).log()).sum()
    for est in ("k1", "k3"):  # the expectation under pi of the unbiased estimators is the true KL
        e = (pi * P.kl_estimate(pi.log(), ref.log(), est)).sum()
        assert close(e, true_kl)
    assert close(true_kl, 0.5108256)


def test_kl_shaped_rewards_put_score_on_last_token():
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    scores = T([1.0, 2.0])
    r = P.kl_shaped_rewards(scores, kl, mask, kl_coef=0.5)
    # row 0: -0.5 * [0.1, 0.2, 0.3] = [-0.05, -0.1, -0.15], +1 on token 2 -> 0.85
    # row 1: -0.5 * [0.4, 0.5] = [-0.2, -0.25], +2 on token 1 (its last real one) -> 1.75; padding 0
    assert close(r, [[-0.05, -0.1, 0.85], [-0.2, 1.75, 0.0]])


def test_sequence_penalty_and_missing_eos():
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    # 1 - 0.5 * 0.6 = 0.7 ; 2 - 0.5 * 0.9 = 1.55
    assert close(P.kl_penalized_scores(T([1.0, 2.0]), kl, mask, 0.5), [0.7, 1.55])
    assert close(P.missing_eos_penalty(T([1.0, 2.0]), T([True, False]), 1.5), [1.0, 0.5])


def test_gae_hand_computed():
    # one response of 3 tokens, rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 1, lam 0.5
    # deltas: d2 = 1 + 0 - 0.7 = 0.3 ; d1 = 0 + 0.7 - 0.6 = 0.1 ; d0 = 0 + 0.6 - 0.5 = 0.1
    # A2 = 0.3 ; A1 = 0.1 + 0.5 * 0.3 = 0.25 ; A0 = 0.1 + 0.5 * 0.25 = 0.225 ; returns = A + V
    rewards, values, mask = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), T([[1, 1, 1]])
    adv, ret = P.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert close(adv, [[0.225, 0.25, 0.3]])
    assert close(ret, [[0.725, 0.85, 1.0]])


def test_gae_with_discount_and_padding():
    # 2 real tokens then padding (whose value 5.0 must not leak back); gamma 0.9, lam 1:
    # d1 = 2 + 0.9 * 0 - 1 = 1 ; d0 = 0 + 0.9 * 1 - 0.5 = 0.4 ; A1 = 1 ; A0 = 0.4 + 0.9 * 1 = 1.3
    rewards, values, mask = T([[0.0, 2.0, 7.0]]), T([[0.5, 1.0, 5.0]]), T([[1, 1, 0]])
    adv, ret = P.gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert close(adv, [[1.3, 1.0, 0.0]])
    assert close(ret, [[1.8, 2.0, 0.0]])  # with lam = 1, returns are the discounted reward-to-go: 0.9 * 2, 2


def test_reinforce_rloo_grpo_advantages():
    scores = T([1.0, 2.0, 3.0, 6.0, 0.0, 0.0])  # prompt 0: [1, 2, 3], prompt 1: [6, 0, 0]
    assert close(P.reinforce_advantages(scores, 2.0), [-1.0, 0.0, 1.0, 4.0, -2.0, -2.0])
    # RLOO: 1 - (2+3)/2 = -1.5 ; 2 - (1+3)/2 = 0 ; 3 - 1.5 = 1.5 ; 6 - 0 = 6 ; 0 - 3 = -3 ; 0 - 3 = -3
    assert close(P.rloo_advantages(scores, 3), [-1.5, 0.0, 1.5, 6.0, -3.0, -3.0])
    # GRPO: group 0 mean 2, std 1 -> [-1, 0, 1]/(1 + 1e-4); group 1 mean 2, std sqrt(((16+4+4)/2)) = sqrt(12)
    s12 = math.sqrt(12.0)
    assert close(P.grpo_advantages(scores, 3), [-1 / 1.0001, 0.0, 1 / 1.0001, 4 / (s12 + 1e-4), -2 / (s12 + 1e-4), -2 / (s12 + 1e-4)])
    assert close(P.grpo_advantages(scores, 3, scale=False), [-1.0, 0.0, 1.0, 4.0, -2.0, -2.0])
    with pytest.raises(ValueError, match="RLOO needs at least 2 samples per prompt"):
        P.rloo_advantages(scores, 1)


def test_clipped_policy_loss():
    # ratios e^{log r}: [1.5, 0.5, 1.1] with advantages [1, 1, -1], clip 0.2:
    # t0: A=1, r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped) ; t1: A=1, r=0.5 -> max(-0.5, -0.8) = -0.5 (not clipped)
    # t2: A=-1, r=1.1 -> max(1.1, 1.1) = 1.1 ; mean = (-1.2 - 0.5 + 1.1) / 3 = -0.2 ; clip_frac = 1/3
    old = T([[0.0, 0.0, 0.0]])
    new = T([[math.log(1.5), math.log(0.5), math.log(1.1)]])
    out = P.clipped_policy_loss(new, old, T([[1.0, 1.0, -1.0]]), T([[1, 1, 1]]), clip_range=0.2)
    assert close(out.loss, -0.2)
    assert close(out.clip_frac, 1 / 3)
    assert close(out.ratio_mean, (1.5 + 0.5 + 1.1) / 3)
    # approx_kl: mean of (1/r - 1) + log r = (-1/3 + 0.405465 + 1 - 0.693147 + 1/1.1 - 1 + 0.0953102) / 3
    expected = ((1 / 1.5 - 1 + math.log(1.5)) + (2 - 1 + math.log(0.5)) + (1 / 1.1 - 1 + math.log(1.1))) / 3
    assert close(out.approx_kl, expected)


def test_clipped_policy_loss_sequence_advantages_and_gradient_sign():
    # sequence advantages broadcast to tokens; at ratio 1 the gradient of the loss w.r.t. logprob is -A / n_tokens
    lp = torch.zeros(2, 2, requires_grad=True)
    out = P.clipped_policy_loss(lp, torch.zeros(2, 2), T([2.0, -1.0]), T([[1, 1], [1, 0]]))
    # loss = mean(-2, -2, 1) = -1 over 3 real tokens
    assert close(out.loss, -1.0)
    out.loss.backward()
    assert close(lp.grad, [[-2 / 3, -2 / 3], [1 / 3, 0.0]])
    # sequence aggregation: row means -2 and 1 -> -0.5
    seq = P.clipped_policy_loss(torch.zeros(2, 2), torch.zeros(2, 2), T([2.0, -1.0]), T([[1, 1], [1, 0]]), aggregate="sequence")
    assert close(seq.loss, -0.5)


def test_clipped_value_loss():
    # V = [1.0, 0.0], V_old = [0.5, 0.5], R = [2.0, 0.0], clip 0.2:
    # t0: (1-2)^2 = 1 ; clipped V = 0.7 -> (0.7-2)^2 = 1.69 -> max 1.69
    # t1: (0-0)^2 = 0 ; clipped V = 0.3 -> 0.09 -> max 0.09 ; loss = 0.5 * (1.69 + 0.09)/2 = 0.445 ; frac 1
    v, old, ret, m = T([[1.0, 0.0]]), T([[0.5, 0.5]]), T([[2.0, 0.0]]), T([[1, 1]])
    loss, frac = P.clipped_value_loss(v, old, ret, m, clip_range=0.2)
    assert close(loss, 0.445)
    assert close(frac, 1.0)
    plain, _ = P.clipped_value_loss(v, old, ret, m, clip_range=None)
    assert close(plain, 0.25)  # 0.5 * (1 + 0) / 2


def test_grpo_loss():
    # ratio 1 everywhere, A = [1, -1]; log ref - log pi = log 0.5 on every token: k3 = 0.5 - 1 + ln 2 = 0.193147
    # surrogate per response: -1 and +1 -> mean 0 ; loss = 0 + 0.1 * 0.193147
    lp = torch.zeros(2, 3)
    ref = torch.full((2, 3), math.log(0.5))
    mask = T([[1, 1, 1], [1, 0, 0]])
    loss, pg, kl = P.grpo_loss(lp, lp, ref, T([1.0, -1.0]), mask, beta=0.1)
    assert close(pg.loss, 0.0)
    assert close(kl, 0.5 - 1 + math.log(2))
    assert close(loss, 0.1 * (0.5 - 1 + math.log(2)))


def test_ptx_entropy_explained_variance():
    # ptx: -0.5 * mean(-1, -3) = 1.0
    assert close(P.ptx_loss(T([[-1.0, -3.0, -100.0]]), T([[1, 1, 0]]), 0.5), 1.0)
    # uniform over 4: entropy ln 4 ; one-hot (very peaked) ~ 0
    ent = P.entropy_from_logits(T([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    assert close(ent, [math.log(4), 0.0], tol=1e-4)
    # returns [1, 2, 3, 4] var 5/3; values = returns - [0, 0, 1, -1]: residual var = 2/3 (mean 0, 2 / 3)
    # explained variance = 1 - (2/3)/(5/3) = 0.6
    ret = T([[1.0, 2.0, 3.0, 4.0]])
    ev = P.explained_variance(ret - T([[0.0, 0.0, 1.0, -1.0]]), ret, T([[1, 1, 1, 1]]))
    assert close(ev, 0.6)


def test_kl_controllers():
    fixed = P.FixedKLController(0.1)
    assert fixed.update(5.0, 100) == 0.1
    ctl = P.AdaptiveKLController(0.1, target=6.0, horizon=100)
    # KL 12 -> error clip(12/6 - 1) = 0.2 ; beta = 0.1 * (1 + 0.2 * 10/100) = 0.102
    assert ctl.update(12.0, 10) == pytest.approx(0.102)
    # KL 3 -> error -0.5 clipped to -0.2 ; beta = 0.102 * (1 - 0.2 * 50/100) = 0.0918
    assert ctl.update(3.0, 50) == pytest.approx(0.0918)
    state = ctl.state_dict()
    fresh = P.AdaptiveKLController(0.1, target=6.0, horizon=100)
    fresh.load_state_dict(state)
    assert fresh.value == pytest.approx(0.0918)


def test_token_logprobs_and_entropy_hand_computed_with_gradient():
    # rows: uniform over 4 -> H = log 4; (100, 0, 0, 0) -> H ~ 0; uniform over 2 of 4 (-1e4 elsewhere) -> log 2;
    # (0, ln 3, -1e4, -1e4): p = (1/4, 3/4), label 1 -> ln 3/4, H = 1/4 ln 4 + 3/4 ln 4/3 = 0.562335
    from preftune.models.logprobs import token_logprobs, token_logprobs_and_entropy

    logits = T([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [1.0, 1.0, -1e4, -1e4], [0.0, math.log(3), -1e4, -1e4],
                [0.5, 0.1, 0.2, 0.3]]).requires_grad_()
    labels = torch.tensor([2, 0, 1, 1, -100])
    lp, ent = token_logprobs_and_entropy(logits, labels, chunk=2)
    assert not ent.requires_grad
    assert torch.allclose(ent[:4], T([math.log(4), 0.0, math.log(2), 0.562335]), atol=1e-5)
    assert torch.allclose(lp, T([-math.log(4), 0.0, -math.log(2), math.log(0.75), 0.0]), atol=1e-5)
    # the gradient equals autograd's through cross-entropy: onehot(y) - softmax(z), 0 on ignored rows
    w = T([1.0, -2.0, 0.5, 3.0, 7.0])
    (lp * w).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    (token_logprobs(ref_logits, labels) * w).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
    assert logits.grad[4].abs().sum() == 0
