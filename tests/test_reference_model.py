"""`models.reference`: one reference model for DPO and online RL (a frozen copy, or the LoRA policy with its
adapters off), and the policy left as it was after it."""

from __future__ import annotations

import pytest
import torch

from preftune.errors import PreftuneError
from preftune.models.loading import tiny_model
from preftune.models.lora import apply_lora
from preftune.models.reference import NO_REFERENCE, frozen_copy, reference_view
from preftune.rl.experience import make_reference
from preftune.models.policy import policy_forward

PROMPTS = [[5, 6, 7], [8, 9]]
SEQUENCES = [[5, 6, 7, 10, 11, 12], [8, 9, 13, 14]]


def _lora_policy():
    base = tiny_model(64, seed=0)
    policy = apply_lora(base, r=2, alpha=4, dropout=0.0)  # no dropout: train-mode passes are repeatable
    with torch.no_grad():  # LoRA's B starts at zero; move it so the adapters change the outputs
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    return policy.train()


def _logprobs(model):
    return policy_forward(model, PROMPTS, SEQUENCES, pad_id=0).logprobs


def test_a_frozen_copy_is_the_reference_as_given():
    policy = tiny_model(64, seed=0).train()
    ref = frozen_copy(policy)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    with reference_view(policy, ref) as inside:
        assert inside is ref
    assert policy.training


def test_the_lora_view_is_the_base_model_and_the_adapters_come_back():
    policy = _lora_policy()
    with torch.no_grad():
        with_adapters = _logprobs(policy)
        with reference_view(policy) as ref:
            assert ref is policy and not policy.training
            off = _logprobs(ref)
        again = _logprobs(policy)
    assert policy.training
    torch.testing.assert_close(again, with_adapters)
    assert (off - with_adapters).abs().max() > 1e-3  # the adapters were really off inside
    with torch.no_grad():  # ... and what ran inside was the base model (the same seed gives the same base weights)
        torch.testing.assert_close(off, _logprobs(tiny_model(64, seed=0).eval()))
    with pytest.raises(RuntimeError, match="boom"), reference_view(policy):
        raise RuntimeError("boom")
    assert policy.training
    with torch.no_grad():
        torch.testing.assert_close(_logprobs(policy), with_adapters)


def test_rls_reference_is_the_view():
    """Online RL's per-token reference log-probs are the view's (DPO's Reference runs the same view: its adapter
    and copy modes are covered by the DPO tests with --lora and ref=copy)."""
    policy = _lora_policy()
    rl_ref = make_reference(policy, pad_id=0)(PROMPTS, SEQUENCES)
    with torch.no_grad(), reference_view(policy) as ref:
        direct = _logprobs(ref)
    torch.testing.assert_close(rl_ref, direct)
    assert policy.training


def test_no_adapters_and_no_copy_is_a_clear_error():
    policy = tiny_model(64, seed=0)
    with pytest.raises(PreftuneError, match="a reference model is needed"):
        make_reference(policy, pad_id=0)
    with pytest.raises(PreftuneError) as err, reference_view(policy, missing="ref=adapter needs LoRA training (--lora)"):
        pass
    assert str(err.value) == "ref=adapter needs LoRA training (--lora)"
    assert NO_REFERENCE.startswith("a reference model is needed")


def test_dpos_adapter_reference_equals_a_copy_of_the_base_model(chatml_tokenizer):
    """DPO's Reference in adapter mode (the LoRA policy, adapters off) gives the pair log-probs that copy mode gives
    with the base model itself; the policy keeps its adapters and train mode."""
    from preftune.data.formats import PreferencePair
    from preftune.data.tokenize import encode_pair
    from preftune.train.dpo import PairCollator, PairItem, Reference

    vocab = len(chatml_tokenizer)
    policy = apply_lora(tiny_model(vocab, seed=1), r=2, alpha=4, dropout=0.0).train()
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    t = encode_pair(chatml_tokenizer, PreferencePair("What is 2 + 2?", "It is 4.", "Hello world"), 64)
    batch = PairCollator(chatml_tokenizer.pad_token_id, "separate")([PairItem(0, t.prompt_ids, t.chosen_ids, t.rejected_ids)])
    adapter = Reference("adapter")(policy, batch)
    copy = Reference("copy", ref_model=frozen_copy(tiny_model(vocab, seed=1)))(policy, batch)
    torch.testing.assert_close(adapter, copy)
    assert policy.training
    with pytest.raises(PreftuneError, match=r"ref=adapter needs LoRA training \(--lora\)"):
        Reference("adapter")(tiny_model(vocab, seed=1), batch)
