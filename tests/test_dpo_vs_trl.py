"""Differential test: preftune's DPO-family losses against TRL's DPOTrainer (test-only oracle) on one batch.

TRL builds and collates the batch; both sides read the same token ids. The policy and the reference are two
different tiny models, so the loss is not the trivial log 2 of a policy equal to its reference.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")


def _seq_logps(model, batch) -> torch.Tensor:
    """Summed log-probs of the completion tokens of each row of TRL's batch (chosen rows first, then rejected)."""
    ids, mask, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    token = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (token * comp[:, 1:]).sum(-1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
def test_dpo_losses_equal_trl(tmp_path, loss_type):
    import datasets
    from transformers import AutoModelForCausalLM

    from preftune.losses.preference import paired_loss, PairLogps
    from preftune.models.loading import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    for name, seed in (("policy", 1), ("ref", 2)):
        tiny_model(len(tok), seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "ref").eval()
    rows = [{"prompt": "What is 2 + 2?", "chosen": " It is 4.", "rejected": " It is 5."},
            {"prompt": "Say hi", "chosen": " Hello world!", "rejected": " No."}]
    label_smoothing = 0.1 if loss_type == "robust" else 0.0
    config = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, report_to="none",
                           use_cpu=True, bf16=False, max_length=None, loss_type=[loss_type], beta=0.1,
                           label_smoothing=label_smoothing, gradient_checkpointing=False)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, batch).item()

    pol, rf = _seq_logps(policy, batch), _seq_logps(ref, batch)
    lengths = batch["completion_mask"][:, 1:].sum(-1).float()
    x = PairLogps(policy_chosen=pol[:2], policy_rejected=pol[2:], ref_chosen=rf[:2], ref_rejected=rf[2:],
                  chosen_lengths=lengths[:2], rejected_lengths=lengths[2:])
    ours = paired_loss(loss_type, x, beta=0.1, label_smoothing=label_smoothing).loss.item()
    assert abs(trl_loss - 0.6931) > 1e-3  # not the trivial policy == reference value
    assert ours == pytest.approx(trl_loss, abs=1e-5)
