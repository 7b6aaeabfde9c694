"""The generation engine: seeded determinism, greedy parity with transformers, stops, and sampling log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.errors import PreftuneError
from preftune.generation import GenerationOutput, HFEngine, SamplingParams, generate_texts
from preftune.generation.engine import filter_top_k, filter_top_p, sample_next
from preftune.models.loading import tiny_model

PROMPTS = ["Hello world", "How do I bake bread? Mix flour", "a", "Thanks, have a nice day. What is 2 + 2?"]


@pytest.fixture(scope="module")
def tok():
    from preftune.models.loading import tiny_tokenizer

    return tiny_tokenizer("chatml")


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok), kind="llama", seed=1)


@pytest.fixture(scope="module")
def prompt_ids(tok):
    return [tok(p)["input_ids"] for p in PROMPTS]


def _hf_greedy(model, ids, n, eos):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, pad_token_id=eos, eos_token_id=eos)
    return out[0, len(ids):].tolist()


# -- pure sampling helpers ---------------------------------------------------------------------------

def test_filter_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = filter_top_k(logits, 2)
    assert out.tolist() == [[float("-inf"), 3.0, 2.0, float("-inf")]]
    assert filter_top_k(logits, 0) is logits


def test_filter_top_p_hand_computed():
    # probs = [0.5, 0.3, 0.15, 0.05]: mass before each = [0, 0.5, 0.8, 0.95]; with p = 0.7 tokens whose
    # preceding mass is >= 0.7 are dropped -> keep tokens 0 and 1 (0.5 + 0.3 = 0.8 >= 0.7).
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    out = filter_top_p(probs.log(), 0.7)
    kept = torch.isfinite(out)[0].tolist()
    assert kept == [False, True, False, True]
    # p just above 0.8 also keeps the 0.15 token
    assert torch.isfinite(filter_top_p(probs.log(), 0.81))[0].tolist() == [True, True, False, True]
    # a tiny p still keeps the single most likely token
    assert torch.isfinite(filter_top_p(probs.log(), 0.01))[0].tolist() == [False, True, False, False]


def test_sample_next_greedy_logprob():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    tok, lp = sample_next(logits, SamplingParams(do_sample=False))
    assert tok.tolist() == [1]
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)

def test_inverse_cdf_sample_frequencies_and_zero_mass():
    from preftune.generation.engine import inverse_cdf_sample

    g = torch.Generator().manual_seed(0)
    n = 200_000
    # zero-probability tokens at both ends and in the middle are never drawn (u * total < total, right=True)
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0]]).expand(n, 6)
    tokens = inverse_cdf_sample(probs, g)
    freq = torch.bincount(tokens, minlength=6).double() / n
    assert freq[[0, 2, 5]].tolist() == [0.0, 0.0, 0.0]
    # binomial standard error at n = 200k is <= 0.0012: 5 s.e. is 0.006
    assert freq[[1, 3, 4]].tolist() == pytest.approx([0.1, 0.6, 0.3], abs=0.006)
    # unnormalised rows (a filtered softmax that sums to 0.5) are drawn in proportion
    half = torch.tensor([[0.25, 0.25]]).expand(n, 2)
    assert (torch.bincount(inverse_cdf_sample(half, g), minlength=2).double() / n).tolist() == pytest.approx([0.5, 0.5], abs=0.006)
    # seeded: the same generator state gives the same draws
    a = inverse_cdf_sample(probs[:100], torch.Generator().manual_seed(3))
    b = inverse_cdf_sample(probs[:100], torch.Generator().manual_seed(3))
    assert torch.equal(a, b)



def test_sampling_params_validation():
    with pytest.raises(PreftuneError, match="top_p must be in \\(0, 1\\], got 0"):
        SamplingParams(top_p=0)
    with pytest.raises(PreftuneError, match="max_new_tokens must be at least 1, got 0"):
        SamplingParams(max_new_tokens=0)
    assert SamplingParams(stop="x").stop == ("x",)


def test_padded_tensors():
    out = GenerationOutput(sequences=[[5, 2], [7]], logprobs=[[-0.5, -1.0], [-2.0]], texts=["a", "b"], finished=[True, False])
    ids, mask, lps = out.padded(pad_id=0)
    assert ids.tolist() == [[5, 2], [7, 0]]
    assert mask.tolist() == [[1, 1], [1, 0]]
    assert lps.tolist() == [[-0.5, -1.0], [-2.0, 0.0]]


# -- the engine ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preallocate", [True, False])
def test_greedy_equals_transformers_generate(model, tok, prompt_ids, preallocate):
    engine = HFEngine(model, tok, batch_size=3, preallocate=preallocate, decode_dtype="float32")
    out = engine.generate(prompt_ids, SamplingParams(max_new_tokens=12, do_sample=False))
    for ids, seq in zip(prompt_ids, out.sequences):
        assert seq == _hf_greedy(model, ids, 12, tok.eos_token_id)


def test_greedy_equals_transformers_generate_gpt2(gpt2_tokenizer):
    model = tiny_model(len(gpt2_tokenizer), kind="gpt2", seed=2)
    ids = [gpt2_tokenizer(p)["input_ids"] for p in PROMPTS]
    out = HFEngine(model, gpt2_tokenizer, batch_size=4).generate(ids, SamplingParams(max_new_tokens=8, do_sample=False))
    for p, seq in zip(ids, out.sequences):
        assert seq == _hf_greedy(model, p, 8, gpt2_tokenizer.eos_token_id)


def test_seeded_sampling_is_deterministic(model, tok, prompt_ids):
    engine = HFEngine(model, tok, batch_size=2)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=123)
    a = engine.generate(prompt_ids, params)
    b = engine.generate(prompt_ids, params)
    c = engine.generate(prompt_ids, SamplingParams(max_new_tokens=10, temperature=1.0, seed=124))
    assert a.sequences == b.sequences and a.logprobs == b.logprobs
    assert a.sequences != c.sequences


def test_top_k_one_is_greedy(model, tok, prompt_ids):
    engine = HFEngine(model, tok)
    greedy = engine.generate(prompt_ids, SamplingParams(max_new_tokens=6, do_sample=False))
    topk1 = engine.generate(prompt_ids, SamplingParams(max_new_tokens=6, temperature=1.0, top_k=1, seed=0))
    assert topk1.sequences == greedy.sequences


def test_sampling_logprobs_equal_recomputation(model, tok, prompt_ids):
    """log_softmax(logits / T) of each sampled token, recomputed by one forward over prompt + completion."""
    temperature = 0.7
    engine = HFEngine(model, tok, batch_size=4, decode_dtype="float32")
    out = engine.generate(prompt_ids, SamplingParams(max_new_tokens=9, temperature=temperature, top_p=0.9, seed=5))
    for p, seq, lps in zip(prompt_ids, out.sequences, out.logprobs):
        full = torch.tensor([p + seq])
        with torch.no_grad():
            logits = model(full).logits[0, len(p) - 1 : -1] / temperature
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(seq)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(lps), expected, atol=1e-4)
        assert len(seq) == 9


def test_stop_string_cuts_text_and_ends_sequence(model, tok, prompt_ids):
    engine = HFEngine(model, tok)
    free = engine.generate(prompt_ids[:1], SamplingParams(max_new_tokens=12, do_sample=False))
    text = free.texts[0]
    stop = text[5:8]  # a string the greedy continuation is known to contain
    cut = text.find(stop)
    out = engine.generate(prompt_ids[:1], SamplingParams(max_new_tokens=12, do_sample=False, stop=(stop, "never-there")))
    assert out.texts[0] == text[:cut]
    assert out.finished == [True]
    seq = out.sequences[0]
    assert seq == free.sequences[0][: len(seq)]  # a prefix of the free run
    assert stop in tok.decode(seq) and stop not in tok.decode(seq[:-1])  # ends on the token completing the stop
    assert free.finished == [False]


def test_eos_stops_each_sequence_on_its_own(model, tok, prompt_ids):
    engine = HFEngine(model, tok, batch_size=4)
    free = engine.generate(prompt_ids, SamplingParams(max_new_tokens=10, do_sample=False))
    target = free.sequences[1][2]  # pretend this token is the EOS
    engine.eos_ids = {target}
    out = engine.generate(prompt_ids, SamplingParams(max_new_tokens=10, do_sample=False))
    for full, seq, text, fin in zip(free.sequences, out.sequences, out.texts, out.finished):
        if target in full:
            end = full.index(target) + 1
            assert seq == full[:end] and fin
            assert text == tok.decode(full[: end - 1], skip_special_tokens=True)
        else:
            assert seq == full and not fin


def test_generate_texts_with_conversations(model, tok):
    prompts = [[{"role": "user", "content": "Hello world"}], "What is 2 + 2?"]
    out = generate_texts(model, tok, prompts, SamplingParams(max_new_tokens=4, do_sample=False), batch_size=2)
    chat_ids = tok(tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert out.prompt_ids[0] == chat_ids
    assert out.sequences[0] == _hf_greedy(model, chat_ids, 4, tok.eos_token_id)
    assert len(out.texts) == 2


def test_empty_prompt_is_an_error(model, tok):
    with pytest.raises(PreftuneError, match="prompt 1 is empty"):
        HFEngine(model, tok).generate([[5], []], SamplingParams(max_new_tokens=2))


@pytest.mark.parametrize("fast_decode", [False, True])
def test_repeated_prompts_are_prefilled_once_with_the_same_results(model, tok, prompt_ids, fast_decode):
    # k copies of each prompt (online RL): one prefill per distinct prompt, its KV cache copied to the k rows;
    # greedy rows equal the single-prompt runs, and seeded sampling is reproducible
    engine = HFEngine(model, tok, batch_size=16, show_progress=False, fast_decode=fast_decode)
    repeated = [p for p in prompt_ids for _ in range(3)]
    calls = []
    if fast_decode:  # the prompts go through the decoder's own prefill
        real = engine._fast_prefill
        engine._fast_prefill = lambda ids, *a: calls.append(ids.shape) or real(ids, *a)
        handle = None
    else:
        handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        greedy = engine.generate(repeated, SamplingParams(max_new_tokens=6, do_sample=False))
    finally:
        if handle is not None:
            handle.remove()
    assert calls[0][0] == len(prompt_ids)  # the prefill: 4 rows, not 12
    alone = engine.generate(prompt_ids, SamplingParams(max_new_tokens=6, do_sample=False))
    assert greedy.sequences == [s for s in alone.sequences for _ in range(3)]
    params = SamplingParams(max_new_tokens=6, seed=7)
    a, b = engine.generate(repeated, params), engine.generate(repeated, params)
    assert a.sequences == b.sequences and a.logprobs == b.logprobs
    assert len({tuple(s) for s in a.sequences}) > len(prompt_ids)  # the copies sample independently


# -- the lean decode step (fast_decode.py) ------------------------------------------------------------

def _qwen2_with_bias(vocab_size):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2, use_sliding_window=False)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # make the q/k/v biases matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def _llama_with_rope_scaling(vocab_size):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2,
                         rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
    torch.manual_seed(4)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("which", ["llama", "qwen2_bias", "llama_rope_scaling"])
def test_fast_decode_equals_the_reference_forward(tok, prompt_ids, model, which):
    """Same tokens and log-probs (1e-5) as prefilling and decoding through the model's forward: greedy (prompts
    of different lengths, left-padded), seeded sampling with rows leaving the batch at a stop string, and k
    samples per prompt sharing a prefill."""
    from preftune.generation.fast_decode import unsupported_reason

    m = {"llama": model, "qwen2_bias": _qwen2_with_bias(len(tok)), "llama_rope_scaling": _llama_with_rope_scaling(len(tok))}[which]
    assert unsupported_reason(m) is None
    fast = HFEngine(m, tok, batch_size=8, show_progress=False, decode_dtype="float32")
    slow = HFEngine(m, tok, batch_size=8, show_progress=False, fast_decode=False)
    used = []
    real = fast._fast_prefill
    fast._fast_prefill = lambda *a: used.append(real(*a)) or used[-1]
    for prompts, params in [
        (prompt_ids, SamplingParams(max_new_tokens=20, do_sample=False)),
        (prompt_ids, SamplingParams(max_new_tokens=20, temperature=0.9, top_k=50, seed=11, stop=("e",))),
        ([p for p in prompt_ids for _ in range(3)], SamplingParams(max_new_tokens=15, top_p=0.9, seed=3)),
    ]:
        a, b = fast.generate(prompts, params), slow.generate(prompts, params)
        assert a.sequences == b.sequences and a.finished == b.finished and a.texts == b.texts
        for x, y in zip(a.logprobs, b.logprobs):
            assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-5)
    assert used and all(d is not None for d in used)
    # the stop string made rows leave the batch mid-generation (the decoder's select was exercised)
    assert any(len(s) < 20 for s in fast.generate(prompt_ids, SamplingParams(max_new_tokens=20, temperature=0.9, top_k=50,
                                                                               seed=11, stop=("e",))).sequences)


def test_fast_decode_sees_weights_updated_in_place(tok, prompt_ids):
    # online RL updates the policy in place between rollouts: the decoder reads the live parameters, no copies
    m = tiny_model(len(tok), kind="llama", seed=9)
    engine = HFEngine(m, tok, show_progress=False, decode_dtype="float32")
    params = SamplingParams(max_new_tokens=8, do_sample=False)
    before = engine.generate(prompt_ids, params)
    with torch.no_grad():
        torch.manual_seed(0)
        for layer in m.model.layers:
            for w in (layer.self_attn.v_proj.weight, layer.mlp.down_proj.weight):
                w.add_(torch.randn_like(w))
    after = engine.generate(prompt_ids, params)
    reference = HFEngine(m, tok, show_progress=False, fast_decode=False).generate(prompt_ids, params)
    assert after.sequences == reference.sequences and after.sequences != before.sequences


def test_decode_copies_follow_a_fused_optimizer_step_after_on_policy_update(tok, prompt_ids):
    # torch's fused AdamW writes parameters without bumping their version counters, so the bf16 copies cannot
    # see that step by themselves: on_policy_update (what the online trainer calls after every step) drops them
    m = tiny_model(len(tok), kind="llama", seed=9)
    engine = HFEngine(m, tok, show_progress=False, decode_dtype="bfloat16")
    params = SamplingParams(max_new_tokens=8, do_sample=False)
    before = engine.generate(prompt_ids, params)
    opt = torch.optim.AdamW(m.parameters(), lr=0.05, fused=True)
    torch.manual_seed(0)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    engine.on_policy_update(m)
    after = engine.generate(prompt_ids, params)
    fresh = HFEngine(m, tok, show_progress=False, decode_dtype="bfloat16").generate(prompt_ids, params)
    assert after.sequences == fresh.sequences and after.sequences != before.sequences


def test_fast_decode_unsupported_models_fall_back(tok, gpt2_tokenizer):
    from peft import LoraConfig, get_peft_model

    from preftune.generation.fast_decode import LlamaDecoder, unsupported_reason

    gpt2 = tiny_model(len(gpt2_tokenizer), kind="gpt2", seed=2)
    assert unsupported_reason(gpt2) == "model type 'gpt2' is not one of ('llama', 'mistral', 'qwen2')"
    lora = get_peft_model(tiny_model(len(tok), kind="llama", seed=5), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert unsupported_reason(lora.base_model.model) == "projections are not plain nn.Linear (LoRA adapters or quantised layers)"
    with pytest.raises(ValueError, match="cannot decode this model: model type 'gpt2'"):
        LlamaDecoder(gpt2, [], [], torch.ones(1, 1), 1)
    out = HFEngine(lora, tok, show_progress=False).generate([[5, 6, 7]], SamplingParams(max_new_tokens=4, do_sample=False))
    assert len(out.sequences[0]) == 4


def test_bf16_decode_weights_sample_close_to_the_fp32_policy(tok, prompt_ids):
    """bf16 copies of the projections: log-probs of the sampled tokens within 2e-2 of the fp32 model's, and the
    copies are rebuilt after an in-place update (the version counters of the parameters)."""
    from preftune.generation.fast_decode import resolve_decode_dtype

    m = tiny_model(len(tok), kind="llama", seed=9)
    engine = HFEngine(m, tok, show_progress=False, decode_dtype="bfloat16")
    assert engine.decode_dtype == torch.bfloat16 and resolve_decode_dtype(m, "model") is None
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=2)
    for update in (False, True):
        if update:
            with torch.no_grad():
                torch.manual_seed(0)
                for layer in m.model.layers:
                    layer.mlp.down_proj.weight.add_(torch.randn_like(layer.mlp.down_proj.weight))
        out = engine.generate(prompt_ids, params)
        for p, seq, lps in zip(prompt_ids, out.sequences, out.logprobs):
            with torch.no_grad():
                logits = m(torch.tensor([p + seq])).logits[0, len(p) - 1 : -1]
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(seq)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(lps), expected, atol=2e-2), (update, lps, expected.tolist())
    with pytest.raises(ValueError, match="decode_dtype must be auto, model, float32 or bfloat16, got 'int8'"):
        HFEngine(m, tok, decode_dtype="int8")


def test_packed_bf16_decode_weights_give_the_same_tokens_and_logprobs_as_plain_ones(tok, prompt_ids):
    """oneDNN's prepacked layout changes how the bf16 weights are read, not the arithmetic: the same tokens and
    bit-identical log-probs as plain bf16 copies (prefill, decode steps and the LM head), here with q/k/v biases."""
    from preftune.generation.fast_decode import DecodeWeights, packing_available

    if not packing_available(torch.bfloat16):
        pytest.skip("this torch has no oneDNN linear ops for bf16 (decode weights stay plain)")
    m = _qwen2_with_bias(len(tok))
    packed = HFEngine(m, tok, batch_size=8, show_progress=False, decode_dtype="bfloat16")
    plain = HFEngine(m, tok, batch_size=8, show_progress=False, decode_dtype="bfloat16")
    plain._decode_weights = DecodeWeights(m, torch.bfloat16, pack=False)
    for params in (SamplingParams(max_new_tokens=12, do_sample=False), SamplingParams(max_new_tokens=12, seed=5)):
        a, b = packed.generate(prompt_ids, params), plain.generate(prompt_ids, params)
        assert a.sequences == b.sequences and a.logprobs == b.logprobs
    weights = packed._decode_weights
    assert weights.pack and weights.head.packed is not None and weights.head.weight is None
    assert all(layer.qkv.packed is not None and layer.down.packed is not None for layer in weights.layers)
    assert not plain._decode_weights.pack and plain._decode_weights.head.packed is None
    with pytest.raises(ValueError, match="packed decode weights need bf16 copies on a CPU with oneDNN"):
        DecodeWeights(m, None, pack=True)
