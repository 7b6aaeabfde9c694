"""Log-probabilities of completions under a causal LM, computed without waste.

Everything offline preference training, reward scoring, RL and evaluation needs from a policy is
``log π(y | x) = Σ_t log π(y_t | x, y_<t)`` for completion tokens only. Three savings over the naive
"pad every prompt+completion to the longest and take the full logits" path:

1. **Packed rows** (:mod:`preftune.models.packing`): the sequences of a micro-batch laid end to end with a block
   mask and restarting position ids, so there is no padding and a shared prompt is computed once.
2. **LM head only where needed.** The decoder's hidden states are gathered at the N positions that predict a
   completion token and only those go through the LM head (``[N, H] @ [H, V]`` instead of ``[R·L, H] @ [H, V]``);
   with a 49k vocabulary the head is a large share of the FLOPs and most of the activation memory.
3. **Gather, not log_softmax.** ``log p(y) = z_y − logsumexp(z)`` (fused in ``cross_entropy``), never a
   second ``[N, V]`` tensor of log-probs.

The packed layout needs a decoder that accepts a ``(R, 1, L, L)`` float mask with ``position_ids``
(transformers' ``create_causal_mask`` passes a 4-D mask through as is). That is checked for the model types in
:data:`BLOCK_MASK_MODEL_TYPES` (Llama and GPT-2 in the tests); for any other architecture :func:`resolve_layout`
falls back to one padded row per sequence with an ordinary 2-D padding mask, which every causal LM supports,
and a model without a separable decoder/LM head is run whole (full logits, then gathered).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preftune.models.packing import LAYOUTS, PackedBatch, block_attention_mask, from_padded

# Model types whose decoder takes a 4-D additive mask plus position_ids and whose logits are exactly
# lm_head(decoder(...)) (no soft-capping or scaling). Llama and GPT-2 are verified by tests/test_logprobs.py;
# Mistral and Qwen2/3 share Llama's decoder code path in transformers 5.
BLOCK_MASK_MODEL_TYPES = frozenset({"llama", "gpt2", "mistral", "qwen2", "qwen3"})



# -- the pure pieces ---------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[label]`` for every position: ``logits [..., V]``, ``labels [...]`` → ``[...]`` (fp32).

    Computed as ``−cross_entropy`` (a fused ``z_y − logsumexp(z)``), so no ``[..., V]`` log-prob tensor is
    materialised next to the logits. Labels < 0 (e.g. −100 for "ignore") give 0.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab).float()
    lab = labels.reshape(-1)
    out = -F.cross_entropy(flat, lab.clamp(min=0), reduction="none")
    out = out.masked_fill(lab < 0, 0.0)
    return out.view(labels.shape)


class _LogprobsEntropy(torch.autograd.Function):
    """``log softmax(z)[y]`` with its gradient, and ``H(softmax(z))`` without one, in row chunks (see below)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk: int):
        n = logits.shape[0]
        lse = logits.new_empty(n)
        entropy = logits.new_empty(n)
        for i in range(0, n, chunk):
            z = logits[i:i + chunk]
            m = torch.logsumexp(z, dim=-1)
            lse[i:i + chunk] = m
            # H = lse - sum_v p_v z_v, with p = exp(z - lse)
            entropy[i:i + chunk] = m - (torch.exp(z - m[:, None]) * z).sum(-1)
        lp = logits.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1) - lse
        lp = lp.masked_fill(labels < 0, 0.0)
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(entropy)
        return lp, entropy

    @staticmethod
    def backward(ctx, grad_lp: torch.Tensor, grad_entropy: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        g = grad_lp.masked_fill(labels < 0, 0.0)
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], ctx.chunk):
            # d lp / d z = onehot(y) - softmax(z)
            torch.exp(logits[i:i + ctx.chunk] - lse[i:i + ctx.chunk, None], out=grad[i:i + ctx.chunk])
            grad[i:i + ctx.chunk].mul_(-g[i:i + ctx.chunk, None])
        rows = torch.arange(logits.shape[0], device=logits.device)
        grad[rows, labels.clamp(min=0)] += g
        return grad, None, None


def token_logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log softmax(z)[y], H(softmax(z)))`` for rows ``logits [N, V]``, ``labels [N]`` → ``[N]``, ``[N]`` (fp32).

    The log-probs carry a gradient (labels < 0 give 0); the entropy is a detached diagnostic. Both come from one
    ``logsumexp`` per row, in chunks of ``chunk`` rows small enough that ``exp(z - lse)`` stays in cache: over a
    49k vocabulary this is ~3x less memory traffic than ``cross_entropy`` plus a separate entropy pass, and the
    backward recomputes ``softmax`` chunk by chunk instead of storing an [N, V] tensor.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    lp, entropy = _LogprobsEntropy.apply(flat, labels.reshape(-1), chunk)
    return lp.view(labels.shape), entropy.view(labels.shape)


# -- the forward pass ----------------------------------------------------------------------------------


def _unwrap(model):
    """The causal LM inside a peft / DDP / compiled wrapper (LoRA layers stay in place and active)."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def supports_block_mask(model) -> bool:
    """Whether ``model`` takes the packed layout's 4-D mask (see :data:`BLOCK_MASK_MODEL_TYPES`)."""
    lm = _unwrap(model)
    return getattr(lm.config, "model_type", None) in BLOCK_MASK_MODEL_TYPES and _split(lm) is not None


def resolve_layout(model, layout: str = "auto") -> str:
    """``"auto"`` → ``"packed"`` where the model supports the block mask, else ``"separate"``; a packed layout asked
    for on a model that does not support it falls back to ``"separate"`` too."""
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"unknown layout '{layout}' (choose from auto, {', '.join(LAYOUTS)})")
    if layout == "separate" or not supports_block_mask(model):
        return "separate"
    return "packed" if layout == "auto" else layout


def _split(lm):
    """(decoder, lm_head) of a causal LM whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``."""
    get_decoder = getattr(lm, "get_decoder", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if get_decoder is None or head is None or getattr(lm.config, "model_type", None) not in BLOCK_MASK_MODEL_TYPES:
        return None
    decoder = get_decoder()
    return (decoder, head) if decoder is not None and decoder is not lm else None


def completion_hidden(model, batch: PackedBatch) -> torch.Tensor:
    """Hidden states ``[N, H]`` at the columns that predict the scored tokens (decoder only, no LM head)."""
    lm = _unwrap(model)
    parts = _split(lm)
    if parts is None:
        raise ValueError(f"{type(lm).__name__} has no separable decoder and LM head")
    decoder, _ = parts
    dtype = next(decoder.parameters()).dtype
    if batch.block_mask:
        mask = block_attention_mask(batch.doc_ids, batch.parent_ids, dtype)
    else:
        mask = (batch.doc_ids >= 0).long()
    out = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False)
    return out.last_hidden_state[batch.rows, batch.cols]


def scored_token_logprobs(model, batch: PackedBatch, *, head_chunk_size: int | None = None) -> torch.Tensor:
    """``log π(target)`` of every scored token, ``[N]`` (fp32), with the LM head applied only at those N positions.

    ``head_chunk_size`` bounds the ``[chunk, V]`` logits alive at once (with grad, each chunk is recomputed in the
    backward pass: activation checkpointing of the head, trading a second head matmul for memory).
    """
    lm = _unwrap(model)
    parts = _split(lm)
    if parts is None:  # generic fallback: the whole model, full logits, then gather
        if batch.block_mask:
            raise ValueError(f"{type(lm).__name__} does not support packed rows; use layout='separate'")
        logits = model(input_ids=batch.input_ids, attention_mask=(batch.doc_ids >= 0).long(),
                       position_ids=batch.position_ids, use_cache=False).logits
        return token_logprobs(logits[batch.rows, batch.cols], batch.targets)
    _, head = parts
    hidden = completion_hidden(model, batch)
    if head_chunk_size is None or hidden.shape[0] <= head_chunk_size:
        return token_logprobs(head(hidden), batch.targets)

    def chunk_fn(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return token_logprobs(head(h), t)

    out = []
    for s in range(0, hidden.shape[0], head_chunk_size):
        h, t = hidden[s:s + head_chunk_size], batch.targets[s:s + head_chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(torch.utils.checkpoint.checkpoint(chunk_fn, h, t, use_reentrant=False))
        else:
            out.append(chunk_fn(h, t))
    return torch.cat(out)


@dataclass
class SequenceLogProbs:
    """Per-sequence sums ``[S]`` and token counts ``[S]``, and the per-token values ``[N]`` they came from."""

    sums: torch.Tensor
    counts: torch.Tensor
    tokens: torch.Tensor

    @property
    def means(self) -> torch.Tensor:
        """Length-normalised log-probs ``sums / counts`` (SimPO, ORPO)."""
        return self.sums / self.counts.clamp(min=1)


def segment_sums(values: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``out[s] = Σ_{n: segments[n] = s} values[n]``: ``values, segments [N]`` → ``[num_segments]`` (differentiable)."""
    return torch.zeros(num_segments, dtype=values.dtype, device=values.device).index_add(0, segments, values)


def completion_logprobs(model, batch: PackedBatch | dict, *, head_chunk_size: int | None = None) -> SequenceLogProbs:
    """Summed completion log-probs ``log π(y|x) = Σ_t log π(y_t | x, y_<t)`` per sequence, and token counts.

    ``batch`` is a :class:`PackedBatch` (from :func:`pack_pairs` / :func:`pack_completions`) or a padded dict with
    ``input_ids``, ``attention_mask`` and ``completion_mask`` (``[B, L]``, left or right padding), see :func:`from_padded`.
    """
    if isinstance(batch, dict):
        batch = from_padded(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    tokens = scored_token_logprobs(model, batch, head_chunk_size=head_chunk_size)
    sums = segment_sums(tokens, batch.segments, batch.num_sequences)
    return SequenceLogProbs(sums, batch.counts.to(sums.device), tokens)


def per_position(batch: PackedBatch, tokens: torch.Tensor) -> torch.Tensor:
    """Scatter per-token values ``[N]`` back to the rows: ``[R, L]``, value at each scored token's own column, 0 elsewhere
    (for a batch from :func:`from_padded`, aligned with its ``input_ids``: what PPO's per-token KL needs)."""
    out = torch.zeros(batch.input_ids.shape, dtype=tokens.dtype, device=tokens.device)
    return out.index_put((batch.rows, batch.target_cols), tokens)


def pair_logprobs(model, batch: PackedBatch, **kwargs) -> tuple[SequenceLogProbs, SequenceLogProbs]:
    """(chosen, rejected) :class:`SequenceLogProbs` of a batch from :func:`pack_pairs` (sequences 2i / 2i+1)."""
    seq = completion_logprobs(model, batch, **kwargs)
    return (SequenceLogProbs(seq.sums[0::2], seq.counts[0::2], seq.tokens),
            SequenceLogProbs(seq.sums[1::2], seq.counts[1::2], seq.tokens))


# -- groups of completions sharing one prompt (online RL: k samples per prompt) -----------------------------


