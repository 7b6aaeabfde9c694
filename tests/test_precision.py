"""The one precision policy of every trainer: fp32 master weights, bf16 autocast on a GPU, fp32 on a CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from preftune.errors import PreftuneError
from preftune.train.precision import precision_policy, to_master_weights

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


def test_the_policy_decision(monkeypatch):
    assert precision_policy("auto", "cpu").record() == {"master_weights": "float32", "autocast": "no", "device": "cpu"}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision_policy("auto", "cuda").record() == {"master_weights": "float32", "autocast": "bf16", "device": "cuda"}
    assert precision_policy("auto", "cuda:1").autocast == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a V100 / T4
    assert precision_policy("auto", "cuda").autocast == "fp16"
    # an explicit choice is kept, and master weights stay fp32 whatever the autocast
    assert precision_policy("no", "cuda").record() == {"master_weights": "float32", "autocast": "no", "device": "cuda"}
    assert precision_policy("bf16", "cpu").autocast == "bf16"
    assert precision_policy("bf16", "cpu").weight_dtype == torch.float32
    with pytest.raises(PreftuneError, match=r"^mixed_precision fp16 needs a CUDA GPU \(use bf16 or no on a CPU\)$"):
        precision_policy("fp16", "cpu")
    with pytest.raises(PreftuneError, match=r"^unknown mixed_precision 'fp8' \(choose from auto, no, bf16, fp16\)$"):
        precision_policy("fp8", "cpu")


def test_master_weights_cast_only_what_trains(chatml_tokenizer):
    from preftune.models.loading import tiny_model

    model = tiny_model(len(chatml_tokenizer)).to(torch.bfloat16)
    model.model.embed_tokens.weight.requires_grad_(False)  # frozen: stays bf16 (tied with the LM head)
    to_master_weights(model, precision_policy("auto", "cpu"))
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes.pop("model.embed_tokens.weight") == torch.bfloat16
    assert set(dtypes.values()) == {torch.float32}


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_online_rl_keeps_an_update_below_bf16_resolution(chatml_tokenizer, tmp_path, device):
    # The policy arrives in bf16 (what `preftune ppo` loaded on a GPU before the precision policy). Adam's first step
    # moves every weight by ~lr = 1e-5; an RMSNorm weight of 1.0 in bf16 has a spacing of 2^-7 = 0.0078, so a bf16
    # weight would round the step away and stay exactly 1.0. With fp32 master weights (and bf16 autocast on the
    # GPU) the step is kept.
    from preftune.models.loading import tiny_model
    from preftune.rl.loop import OnlineSettings, OnlineTrainer
    from preftune.rl.pg import PGSettings, PolicyGradient
    from preftune.runs import RunDir

    policy = tiny_model(len(chatml_tokenizer), seed=0).to(device=device, dtype=torch.bfloat16)
    ref = copy.deepcopy(policy).requires_grad_(False)
    settings = OnlineSettings(steps=1, batch_size=2, num_samples=4, max_new_tokens=6, learning_rate=1e-5,
                              minibatch_size=8, kl_coef=0.0, sample_every=0, max_grad_norm=1e6)
    prompts = ["Hello world", "What is 2 + 2?"]
    trainer = OnlineTrainer(policy=policy, tokenizer=chatml_tokenizer, algorithm=PolicyGradient(PGSettings("grpo", 4)),
                            reward_fn=lambda p, r: [float(len(x) % 3) for x in r], prompts=prompts,
                            prompt_ids=[chatml_tokenizer(p)["input_ids"] for p in prompts], settings=settings,
                            run=RunDir(tmp_path), ref_model=ref)
    assert trainer.precision.autocast == ("bf16" if device == "cuda" else "no")
    assert trainer.accelerator.mixed_precision == trainer.precision.autocast
    norm = policy.model.norm.weight
    assert bool((norm == 1.0).all())
    row = trainer.step(0)
    assert row["grad_norm"] > 0
    moved = (norm.detach().float() - 1.0).abs()
    assert 0.5e-5 < moved.max().item() < 2e-5  # ~lr: kept, not rounded to 0 (nor a bf16 spacing of 0.0078)
    assert norm.dtype == torch.float32
