"""Completion log-probs: the packed pair row and completion-only LM head equal a naive padded batch."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.models.logprobs import completion_logprobs, pair_logprobs, per_position, resolve_layout, token_logprobs
from preftune.models.packing import block_attention_mask, from_padded, pack_completions, pack_pairs
from preftune.models.loading import tiny_model

PAD = 2

# Three pairs of different lengths (ids < 300 so they fit the tiny vocabulary of 400).
PROMPTS = [[1, 17, 45, 99, 3], [1, 8], [1, 250, 251, 252, 253, 254, 255, 5]]
CHOSEN = [[11, 12, 13, 2], [40, 41, 42, 43, 44, 45, 2], [7, 2]]
REJECTED = [[21, 22, 2], [50, 2], [60, 61, 62, 63, 64, 2]]


def naive_logprobs(model, prompts, completions):
    """The reference: every prompt+completion in its own right-padded row, full logits, log_softmax, gather."""
    rows = [p + c for p, c in zip(prompts, completions)]
    length = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits.float(), -1)
    out = []
    for b, (p, c) in enumerate(zip(prompts, completions)):
        out.append(sum(logp[b, t - 1, ids[b, t]].item() for t in range(len(p), len(p) + len(c))))
    return torch.tensor(out)


def test_token_logprobs_hand_computed():
    # logits [0, ln 2, ln 3]: softmax = [1, 2, 3] / 6; label 2 → ln(3/6) = −ln 2; label −100 → 0.
    logits = torch.tensor([[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]])
    out = token_logprobs(logits, torch.tensor([2, -100]))
    assert out.tolist() == pytest.approx([-math.log(2), 0.0], abs=1e-6)


def test_block_mask_of_a_pair_row():
    # Row: prompt (2 tokens, doc 0) + chosen (2, doc 1, parent 0) + rejected (1, doc 2, parent 0) + 1 padding.
    doc = torch.tensor([[0, 0, 1, 1, 2, -1]])
    parent = torch.tensor([[-1, -1, 0, 0, 0, -1]])
    allowed = (block_attention_mask(doc, parent)[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # rejected sees the prompt and itself, never chosen
        [0, 0, 0, 0, 0, 1],  # padding sees only itself (no all −inf softmax row)
    ]


def test_pack_pairs_layout():
    batch = pack_pairs([[1, 5]], [[6, 2]], [[7, 8, 2]], pad_id=PAD)
    assert batch.input_ids.tolist() == [[1, 5, 6, 2, 7, 8, 2]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4]]  # rejected restarts at len(prompt)
    assert batch.doc_ids.tolist() == [[0, 0, 1, 1, 2, 2, 2]]
    # chosen tokens 6, 2 predicted from columns 1, 2; rejected's first token (7) from the prompt's last column (1).
    assert batch.cols.tolist() == [1, 2, 1, 4, 5]
    assert batch.targets.tolist() == [6, 2, 7, 8, 2]
    assert batch.segments.tolist() == [0, 0, 1, 1, 1]
    assert batch.counts.tolist() == [2, 3]
    assert batch.num_tokens == 7 and batch.block_mask


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("layout", ["packed", "rows", "separate"])
def test_pair_logprobs_equal_naive_padded_batch(kind, layout):
    model = tiny_model(400, kind=kind, hidden_size=64, num_layers=2, seed=3)
    batch = pack_pairs(PROMPTS, CHOSEN, REJECTED, pad_id=PAD, layout=layout)
    with torch.no_grad():
        chosen, rejected = pair_logprobs(model, batch)
    assert torch.allclose(chosen.sums, naive_logprobs(model, PROMPTS, CHOSEN), atol=1e-5, rtol=0)
    assert torch.allclose(rejected.sums, naive_logprobs(model, PROMPTS, REJECTED), atol=1e-5, rtol=0)
    assert chosen.counts.tolist() == [4, 7, 2] and rejected.counts.tolist() == [3, 2, 6]


def test_packed_rows_with_a_token_budget_and_chunked_head():
    model = tiny_model(400, kind="llama", hidden_size=64, seed=1)
    # Pair sizes 12, 11 and 16 tokens: with a budget of 23, pairs 0 and 1 share row 0 and pair 2 gets row 1.
    batch = pack_pairs(PROMPTS, CHOSEN, REJECTED, pad_id=PAD, max_row_tokens=23)
    assert batch.input_ids.shape == (2, 23) and batch.doc_ids[1].tolist().count(-1) == 7
    with torch.no_grad():
        whole = completion_logprobs(model, batch).sums
        chunked = completion_logprobs(model, batch, head_chunk_size=3).sums
    expected = torch.stack([naive_logprobs(model, PROMPTS, CHOSEN), naive_logprobs(model, PROMPTS, REJECTED)], 1).flatten()
    assert torch.allclose(whole, expected, atol=1e-5) and torch.allclose(chunked, expected, atol=1e-5)


def test_gradients_equal_naive():
    model = tiny_model(400, kind="llama", hidden_size=32, seed=2)
    batch = pack_pairs(PROMPTS, CHOSEN, REJECTED, pad_id=PAD)
    chosen, rejected = pair_logprobs(model, batch, head_chunk_size=4)
    (chosen.sums.sum() - rejected.sums.sum()).backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    rows = [p + c for p, c in zip(PROMPTS + PROMPTS, CHOSEN + REJECTED)]
    length = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)
    total = 0
    for b, p in enumerate(PROMPTS + PROMPTS):
        sign = 1 if b < 3 else -1
        for t in range(len(p), len(rows[b])):
            total = total + sign * logp[b, t - 1, ids[b, t]]
    total.backward()
    for g, p in zip(packed_grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_packed_completions_do_not_see_each_other():
    model = tiny_model(400, kind="llama", hidden_size=64, seed=4)
    prompts, completions = PROMPTS, CHOSEN
    with torch.no_grad():
        packed = completion_logprobs(model, pack_completions(prompts, completions, pad_id=PAD)).sums
    assert torch.allclose(packed, naive_logprobs(model, prompts, completions), atol=1e-5)


def test_padded_dict_left_padding_and_per_position():
    model = tiny_model(400, kind="llama", hidden_size=64, seed=5)
    # Left-padded: row 0 = [PAD, PAD, 1, 17, | 11, 12], row 1 = [1, 8, 9, 10, | 40, 2]; completion = last 2 tokens.
    ids = torch.tensor([[PAD, PAD, 1, 17, 11, 12], [1, 8, 9, 10, 40, 2]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    comp = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]])
    with torch.no_grad():
        seq = completion_logprobs(model, {"input_ids": ids, "attention_mask": attn, "completion_mask": comp})
    expected = naive_logprobs(model, [[1, 17], [1, 8, 9, 10]], [[11, 12], [40, 2]])
    assert torch.allclose(seq.sums, expected, atol=1e-5)
    dense = per_position(from_padded(ids, attn, comp), seq.tokens)
    assert dense.shape == (2, 6) and (dense[:, :4] == 0).all()
    assert torch.allclose(dense.sum(1), expected, atol=1e-5)


def test_layout_falls_back_for_unknown_architectures():
    model = tiny_model(400, kind="llama")
    assert resolve_layout(model, "auto") == "packed"
    model.config.model_type = "some_new_arch"
    assert resolve_layout(model, "auto") == "separate"
    # The generic path (whole model, full logits) still gives the right numbers on separate rows.
    batch = pack_pairs(PROMPTS, CHOSEN, REJECTED, pad_id=PAD, layout="separate")
    with torch.no_grad():
        chosen, _ = pair_logprobs(model, batch)
    model.config.model_type = "llama"
    assert torch.allclose(chosen.sums, naive_logprobs(model, PROMPTS, CHOSEN), atol=1e-5)
