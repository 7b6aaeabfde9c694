"""Differential test: preftune's reward-model loss against TRL's RewardTrainer (test-only oracle) on one batch.

TRL collates the pairs (already tokenised: ``chosen_ids`` / ``rejected_ids``, with or without a per-pair
``margin``) and computes its loss with ``center_rewards_coefficient`` None or 0.01. Two checks:

* the loss: preftune's pure functions (Bradley–Terry with margin + coefficient × centring) on TRL's own rewards;
* end to end: TRL's weights copied into preftune's :class:`~preftune.models.heads.ScalarHeadModel` give the same
  per-sequence rewards (read at the last real token) on TRL's batch, and the same loss from preftune's own
  reward step (:func:`~preftune.train.reward.reward_loss` on preftune's packed / rows / separate layouts).

The pad token is ``<|endoftext|>`` (not EOS ``<|im_end|>``), so HF's forward — the rightmost token that is not
the pad — reads the same position as preftune's (the last position whose mask is 1): the final EOS.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

trl = pytest.importorskip("trl")

BOS, EOS, PAD = 1, 2, 0  # tiny_tokenizer("chatml"): <|im_start|>, <|im_end|>, <|endoftext|>
# (prompt, chosen, rejected) token ids: every length differs, so TRL's batch is padded on the right
PAIRS = [
    ([BOS, 57, 88, 120], [200, 31, 7, EOS], [45, EOS]),
    ([BOS, 9], [310, EOS], [66, 67, 68, 69, 70, EOS]),
    ([BOS, 150, 151, 152, 153, 5], [12, 250, 99, EOS], [301, 302, 303, EOS]),
]
MARGINS = [0.5, 0.0, 1.5]


def _rows(with_margin: bool) -> list[dict]:
    rows = []
    for (p, c, r), m in zip(PAIRS, MARGINS, strict=True):
        row = {"chosen_ids": p + c, "rejected_ids": p + r}
        if with_margin:
            row["margin"] = m
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def models():
    """TRL's sequence-classification Llama (random, head scaled up so the loss is far from log 2), and preftune's
    reward model built from a *different* random tiny LM, then given TRL's body and head weights."""
    from transformers import AutoModelForSequenceClassification

    from preftune.models.heads import ScalarHeadModel
    from preftune.models.loading import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    assert (tok.convert_tokens_to_ids("<|im_start|>"), tok.eos_token_id) == (BOS, EOS)
    tok.pad_token = "<|endoftext|>"
    assert tok.pad_token_id == PAD != tok.eos_token_id

    config = copy.deepcopy(tiny_model(len(tok), seed=1).config)
    config.num_labels = 1
    torch.manual_seed(11)
    oracle = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        oracle.score.weight.mul_(50.0)

    net = ScalarHeadModel.from_causal_lm(tiny_model(len(tok), seed=2), seed=3).eval()
    ids = torch.tensor([PAIRS[0][0] + PAIRS[0][1]])
    with torch.no_grad():  # before the copy the two models differ (so the copy below is what makes them agree)
        assert (net(ids) - oracle(input_ids=ids).logits).abs().max() > 1e-3
        net.seqcls.model.load_state_dict(oracle.model.state_dict())  # strict: the same Llama body
        net.seqcls.score.load_state_dict(oracle.score.state_dict())  # the same Linear(hidden, 1, bias=False)
    return tok, oracle, net


def _trl_loss(tmp_path, tok, oracle, with_margin: bool, coef: float | None):
    """TRL's loss, rewards ``[2N]`` (chosen rows first, then rejected) and its collated batch."""
    import datasets

    args = trl.RewardConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(PAIRS),
                            report_to="none", use_cpu=True, bf16=False, max_length=None,
                            center_rewards_coefficient=coef, gradient_checkpointing=False)
    trainer = trl.RewardTrainer(model=oracle, args=args, processing_class=tok,
                                train_dataset=datasets.Dataset.from_list(_rows(with_margin)))
    assert trainer.model.config.pad_token_id == PAD
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    assert ("margin" in batch) == with_margin
    assert bool((batch["attention_mask"] == 0).any())  # the batch is padded
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    return loss.item(), outputs.logits.squeeze(-1).float(), batch


@pytest.mark.parametrize("coef", [None, 0.01])
@pytest.mark.parametrize("with_margin", [False, True])
def test_reward_loss_equals_trl(tmp_path, models, with_margin, coef):
    from preftune.losses.reward import bradley_terry_loss, reward_centering_loss
    from preftune.train.reward import TokenizedItem, collate, reward_loss

    tok, oracle, net = models
    trl_loss, trl_rewards, batch = _trl_loss(tmp_path, tok, oracle, with_margin, coef)
    n = len(PAIRS)
    chosen, rejected = trl_rewards[:n], trl_rewards[n:]
    assert abs(trl_loss - math.log(2)) > 0.05  # not the trivial value of equal rewards

    # 1. the pure loss functions on TRL's rewards
    margin = torch.tensor(MARGINS) if with_margin else None
    ours = bradley_terry_loss(chosen, rejected, margin)
    if coef is not None:
        ours = ours + coef * reward_centering_loss(chosen, rejected)
    assert ours.item() == pytest.approx(trl_loss, abs=1e-6)

    # 2. where the reward is read: preftune's model on TRL's own (right-padded) batch
    with torch.no_grad():
        rewards = net(batch["input_ids"], batch["attention_mask"])[:, 0]
    torch.testing.assert_close(rewards, trl_rewards, atol=1e-5, rtol=0)

    # 3. preftune's whole reward step on its own layouts of the same pairs
    items = [TokenizedItem(tuple(p), (tuple(c), tuple(r)), margin=m if with_margin else 0.0)
             for (p, c, r), m in zip(PAIRS, MARGINS, strict=True)]
    for layout in ("packed", "rows", "separate"):
        step = collate(items, "bradley_terry", pad_id=PAD, layout=layout)
        with torch.no_grad():
            packed = net(step.packed)[:, 0]
            loss, metrics = reward_loss(net, step, use_margin=True, center_coef=coef or 0.0)
        torch.testing.assert_close(packed[0::2], chosen, atol=1e-5, rtol=0, msg=f"layout {layout}: chosen rewards")
        torch.testing.assert_close(packed[1::2], rejected, atol=1e-5, rtol=0, msg=f"layout {layout}: rejected rewards")
        assert loss.item() == pytest.approx(trl_loss, abs=1e-5), f"layout {layout}"
        assert metrics["rewards/accuracy"] == pytest.approx((chosen > rejected).float().mean().item())
