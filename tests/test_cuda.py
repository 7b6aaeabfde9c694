"""The GPU paths of the sampler (skipped where there is no CUDA device, as in CI).

Everything else in the suite runs on the CPU, except the command-line tests, which load their models with device
"auto" (CUDA and bf16 where a GPU is present). These pin the pieces whose CUDA code differs from the CPU's: the
lean decode step against the reference forward (no bf16 copies on a GPU: the model's own weights), seeded sampling
with a CUDA generator. The online trainer on the device is tests/test_rl.py's toy-reward test, run there for
"cuda" too.
"""

from __future__ import annotations

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
