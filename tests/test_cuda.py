"""The GPU paths: the sampler and online RL on a CUDA device (skipped where there is none, as in CI).

Everything else in the suite runs on the CPU, except the command-line tests, which load their models with device
"auto" (CUDA and bf16 where a GPU is present). These pin the pieces whose CUDA code differs from the CPU's: the
lean decode step against the reference forward (no bf16 copies on a GPU: the model's own weights), seeded sampling
with a CUDA generator, and the online trainer with its models, value head and rollouts on the device.
"""

from __future__ import annotations

import copy

import pytest
import torch

from preftune.generation.engine import HFEngine, SamplingParams
from preftune.models.loading import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the GPU paths are checked where one is lent)")

PROMPTS = ["Hello world", "How do I bake bread?", "What is 2 + 2?", "Thanks", "Python code", "Safety first",
           "The quick", "I am not sure"]


def test_fast_decode_on_cuda_equals_the_reference_forward(chatml_tokenizer):
    tok = chatml_tokenizer
    model = tiny_model(len(tok), kind="llama", seed=1).cuda()
    fast = HFEngine(model, tok, batch_size=8, show_progress=False)
    slow = HFEngine(model, tok, batch_size=8, show_progress=False, fast_decode=False)
    assert fast.fast_decode and fast.decode_dtype is None  # the model's own weights on a GPU
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    for params in (SamplingParams(max_new_tokens=16, do_sample=False), SamplingParams(max_new_tokens=16, seed=4, top_p=0.9)):
        a, b = fast.generate(ids, params), slow.generate(ids, params)
        assert a.sequences == b.sequences and a.finished == b.finished
        for x, y in zip(a.logprobs, b.logprobs):
            assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-4)
        assert fast.generate(ids, params).sequences == a.sequences  # seeded: the same draws again


def test_bf16_model_samples_on_cuda(chatml_tokenizer):
    tok = chatml_tokenizer
    model = tiny_model(len(tok), kind="llama", seed=1).to("cuda", torch.bfloat16)
    engine = HFEngine(model, tok, batch_size=4, show_progress=False)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    out = engine.generate([p for p in ids for _ in range(3)], SamplingParams(max_new_tokens=12, seed=0))
    assert len(out.sequences) == 24 and all(1 <= len(s) <= 12 for s in out.sequences)
    assert all(lp <= 0 for lps in out.logprobs for lp in lps)


@pytest.mark.parametrize("method,gain", [("ppo", 0.08), ("grpo", 0.15)])
def test_online_rl_on_cuda_raises_the_toy_reward(chatml_tokenizer, tmp_path, method, gain):
    from preftune.rl.experience import value_head_for
    from preftune.rl.loop import OnlineSettings, OnlineTrainer
    from preftune.rl.pg import PGSettings, PolicyGradient
    from preftune.rl.ppo import PPO, PPOSettings
    from preftune.runs import RunDir, read_metrics

    tok = chatml_tokenizer
    policy = tiny_model(len(tok), seed=0).cuda()
    ref = copy.deepcopy(policy).requires_grad_(False)
    k = 1 if method == "ppo" else 4
    settings = OnlineSettings(steps=20, batch_size=16 if k == 1 else 8, num_samples=k, max_new_tokens=8,
                              learning_rate=1e-2, minibatch_size=16, ppo_epochs=4, kl_coef=0.005, sample_every=0, seed=0)
    if method == "ppo":
        algo, head = PPO(PPOSettings(vf_coef=0.5)), value_head_for(policy.config.hidden_size).cuda()
    else:
        algo, head = PolicyGradient(PGSettings(method=method, num_samples=k)), None

    def vowel_fraction(prompts, responses):
        return [sum(c in "aeo" for c in r) / max(len(r), 1) for r in responses]

    trainer = OnlineTrainer(policy=policy, tokenizer=tok, algorithm=algo, reward_fn=vowel_fraction, prompts=PROMPTS,
                            prompt_ids=[tok(p)["input_ids"] for p in PROMPTS], settings=settings,
                            run=RunDir(tmp_path / method), ref_model=ref, value_head=head)
    trainer.train()
    rewards = [r["reward_mean"] for r in read_metrics(trainer.run.path)]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + gain, rewards
    assert next(policy.parameters()).device.type == "cuda"
