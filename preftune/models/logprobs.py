"""Log-probabilities of completions under a causal LM, computed without waste.

Everything offline preference training, reward scoring, RL and evaluation needs from a policy is
``log π(y | x) = Σ_t log π(y_t | x, y_<t)`` for completion tokens only. Three savings over the naive
"pad every prompt+completion to the longest and take the full logits" path:

1. **Packed rows.** Sequences of a micro-batch are laid end to end in one (or a few) rows with a 4-D
   additive block mask and restarting position ids, so there is no padding. A preference pair is laid out
   ``[prompt, chosen, rejected]``: chosen sees prompt + chosen causally, rejected sees prompt + rejected
   (never chosen), and rejected's positions restart at ``len(prompt)``; the prompt is computed once per pair.
   The first rejected token is predicted from the prompt's last position.
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

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

# Model types whose decoder takes a 4-D additive mask plus position_ids and whose logits are exactly
# lm_head(decoder(...)) (no soft-capping or scaling). Llama and GPT-2 are verified by tests/test_logprobs.py;
# Mistral and Qwen2/3 share Llama's decoder code path in transformers 5.
BLOCK_MASK_MODEL_TYPES = frozenset({"llama", "gpt2", "mistral", "qwen2", "qwen3"})

LAYOUTS = ("packed", "rows", "separate")


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


def block_attention_mask(doc_ids: torch.Tensor, parent_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive attention mask of packed rows: ``doc_ids, parent_ids [R, L]`` → ``[R, 1, L, L]``.

    Query ``i`` may attend key ``j`` iff ``j ≤ i`` (causal), key ``j`` is a real token (``doc_ids[j] ≥ 0``) and it
    belongs to the query's own document or to the query's parent (``doc[j] ∈ {doc[i], parent[i]}``). A pair
    ``[prompt, chosen, rejected]`` is three documents: prompt (no parent), chosen and rejected (parent: prompt).
    Packed SFT examples are one document each with no parent. Padding (doc −1) queries attend only to
    themselves, so no row of the softmax is all −∞. Allowed entries are 0, the rest ``finfo(dtype).min``.
    """
    _, length = doc_ids.shape
    q_doc = doc_ids.unsqueeze(2)
    k_doc = doc_ids.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril_()
    allowed = causal & (k_doc >= 0) & ((k_doc == q_doc) | (k_doc == parent_ids.unsqueeze(2)))
    allowed |= torch.eye(length, dtype=torch.bool, device=doc_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


# -- batches -----------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Token rows and, for each scored token, where it sits.

    Rows (``[R, L]``): ``input_ids``, ``position_ids``, ``doc_ids`` (−1 = padding), ``parent_ids`` (−1 = none).
    Scored tokens (``[N]``): ``rows``, ``cols`` (the column whose hidden state predicts the token),
    ``target_cols`` (the token's own column), ``targets`` (its id) and ``segments`` (which of the
    ``num_sequences`` sequences it belongs to; for pairs ``2i`` is pair i's chosen, ``2i+1`` its rejected).
    ``block_mask`` says whether the rows need the 4-D block mask (several documents in a row) or an ordinary
    causal + padding mask will do.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    doc_ids: torch.Tensor
    parent_ids: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    target_cols: torch.Tensor
    targets: torch.Tensor
    segments: torch.Tensor
    num_sequences: int
    block_mask: bool

    def to(self, device) -> "PackedBatch":
        return PackedBatch(**{f.name: (getattr(self, f.name).to(device) if torch.is_tensor(getattr(self, f.name))
                                       else getattr(self, f.name)) for f in fields(self)})

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the rows: what the forward pass actually processes usefully."""
        return int((self.doc_ids >= 0).sum())

    @property
    def counts(self) -> torch.Tensor:
        """Scored tokens per sequence, ``[num_sequences]``."""
        return torch.bincount(self.segments, minlength=self.num_sequences)


class _RowBuilder:
    """Accumulates documents into rows, then pads the rows into tensors."""

    def __init__(self):
        self.rows: list[dict[str, list[int]]] = []
        self.scored: list[tuple[int, int, int, int, int]] = []  # row, col, target_col, target, segment

    def new_row(self) -> None:
        self.rows.append({"ids": [], "pos": [], "doc": [], "parent": [], "ndocs": 0})

    def add(self, ids: Sequence[int], start_pos: int, parent: int, scored_from: int | None, segment: int,
            predict_first_from: int | None = None) -> int:
        """Append one document to the current row; score its tokens from index ``scored_from`` on.

        The token at document index ``k ≥ 1`` is predicted from the document's column ``k − 1``; index 0 from
        ``predict_first_from`` (a column of the parent, e.g. the prompt's last token). Returns the column of the
        document's last token.
        """
        row = self.rows[-1]
        r = len(self.rows) - 1
        doc = row["ndocs"]
        row["ndocs"] += 1
        base = len(row["ids"])
        row["ids"].extend(ids)
        row["pos"].extend(range(start_pos, start_pos + len(ids)))
        row["doc"].extend([doc] * len(ids))
        row["parent"].extend([parent] * len(ids))
        if scored_from is not None:
            for k in range(scored_from, len(ids)):
                src = base + k - 1 if k > 0 else predict_first_from
                if src is None:
                    raise ValueError("the first token of a document cannot be scored without a context to predict it")
                self.scored.append((r, src, base + k, ids[k], segment))
        return base + len(ids) - 1

    @property
    def current_length(self) -> int:
        return len(self.rows[-1]["ids"]) if self.rows else 0

    def build(self, pad_id: int, num_sequences: int, *, pad_to_multiple_of: int = 1) -> PackedBatch:
        length = max(len(r["ids"]) for r in self.rows)
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([r[key] + [value] * (length - len(r[key])) for r in self.rows], dtype=torch.long)

        rows, cols, tcols, targets, segs = (torch.tensor(x, dtype=torch.long) for x in zip(*self.scored)) if self.scored \
            else (torch.zeros(0, dtype=torch.long),) * 5
        multi_doc = any(r["ndocs"] > 1 for r in self.rows)
        return PackedBatch(pad("ids", pad_id), pad("pos", 0), pad("doc", -1), pad("parent", -1), rows, cols, tcols,
                           targets, segs, num_sequences, multi_doc)


def pack_pairs(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
               *, pad_id: int, layout: str = "packed", max_row_tokens: int | None = None) -> PackedBatch:
    """Lay out P preference pairs (token ids) for one forward pass; sequence ``2i`` is chosen, ``2i+1`` rejected.

    ``layout``:
      * ``"packed"``: each pair as ``[prompt, chosen, rejected]`` (prompt once), pairs end to end in rows of at most
        ``max_row_tokens`` tokens (default: one row for the whole micro-batch), so no padding at all;
      * ``"rows"``: one ``[prompt, chosen, rejected]`` row per pair, padded to the longest;
      * ``"separate"``: the naive layout, rows ``prompt+chosen`` and ``prompt+rejected``, padded (no block mask;
        any causal LM).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (choose from {', '.join(LAYOUTS)})")
    b = _RowBuilder()
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True)):
        if not p:
            raise ValueError("a pair needs a non-empty prompt (at least a BOS or a template token)")
        if layout == "separate":
            for seg, completion in ((2 * i, c), (2 * i + 1, r)):
                b.new_row()
                b.add(list(p) + list(completion), 0, -1, len(p), seg)
            continue
        size = len(p) + len(c) + len(r)
        if not b.rows or layout == "rows" or (max_row_tokens is not None and b.current_length + size > max_row_tokens):
            b.new_row()
        doc0 = b.rows[-1]["ndocs"]
        last_prompt = b.add(p, 0, -1, None, -1)
        b.add(c, len(p), doc0, 0, 2 * i, predict_first_from=last_prompt)
        b.add(r, len(p), doc0, 0, 2 * i + 1, predict_first_from=last_prompt)
    return b.build(pad_id, 2 * len(prompts))


def pack_completions(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, pad_id: int,
                     layout: str = "packed", max_row_tokens: int | None = None) -> PackedBatch:
    """Lay out S prompt/completion sequences (SFT, KTO, RL, scoring); sequence ``i`` is ``prompts[i] + completions[i]``.

    ``"packed"`` puts them end to end (each its own document, positions restarting, no attention across them) in
    rows of at most ``max_row_tokens``; ``"rows"`` / ``"separate"`` give one padded row each. Only completion
    tokens are scored. A prompt may be empty when the completion has at least two tokens (its first token is
    then not scored: nothing predicts it).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (choose from {', '.join(LAYOUTS)})")
    b = _RowBuilder()
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids = list(p) + list(c)
        if not b.rows or layout != "packed" or (max_row_tokens is not None and b.current_length + len(ids) > max_row_tokens):
            b.new_row()
        b.add(ids, 0, -1, max(len(p), 1), i)
    return b.build(pad_id, len(prompts))


def from_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> PackedBatch:
    """A :class:`PackedBatch` view of an ordinary padded batch (left or right padding): ``[B, L]`` each.

    Scores the tokens where ``completion_mask`` is 1 (never position 0); positions are ``cumsum(mask) − 1``.
    """
    attention_mask = attention_mask.long()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    doc = torch.where(attention_mask.bool(), 0, -1)
    scored = completion_mask.bool() & attention_mask.bool()
    scored[:, 0] = False
    rows, tcols = scored.nonzero(as_tuple=True)
    # With left or right padding the real tokens of a row are contiguous, so column t is predicted from t − 1.
    return PackedBatch(input_ids, position_ids, doc, torch.full_like(doc, -1), rows, tcols - 1, tcols,
                       input_ids[rows, tcols], rows, input_ids.shape[0], False)


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


def pack_groups(prompts: Sequence[Sequence[int]], groups: Sequence[Sequence[Sequence[int]]], *, pad_id: int,
                max_row_tokens: int | None = None) -> PackedBatch:
    """Lay out G groups ``[prompt, c_1, ..., c_k]`` (the prompt computed once per group); sequences are numbered
    group by group (group g's j-th completion is sequence ``sum(len(groups[:g])) + j``).

    The generalisation of :func:`pack_pairs` (a pair is a group of two): every completion is a document whose parent
    is its group's prompt, so it sees the prompt and itself causally and never a sibling; its positions restart at
    ``len(prompt)`` and its first token is predicted from the prompt's last column. Groups are laid end to end in
    rows of at most ``max_row_tokens`` tokens (a longer group gets a row of its own); ``None``: one group per row,
    padded to the longest (attention is quadratic in the row length, so short rows are cheaper than one long one).
    Tensors ``[R, L]`` / ``[N]`` as in :class:`PackedBatch`; the rows always need the block mask.
    """
    b = _RowBuilder()
    seg = 0
    for p, group in zip(prompts, groups, strict=True):
        if not p:
            raise ValueError("a group needs a non-empty prompt (at least a BOS or a template token)")
        size = len(p) + sum(len(c) for c in group)
        if not b.rows or max_row_tokens is None or b.current_length + size > max_row_tokens:
            b.new_row()
        doc0 = b.rows[-1]["ndocs"]
        last_prompt = b.add(p, 0, -1, None, -1)
        for c in group:
            b.add(c, len(p), doc0, 0, seg, predict_first_from=last_prompt)
            seg += 1
    batch = b.build(pad_id, seg)
    batch.block_mask = True
    return batch


def group_by_prompt(prompts: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Group sequence indices by identical prompt: ``(unique prompts, indices of each)``, in order of first appearance.

    ``[[1, 2], [3], [1, 2]]`` → ``([[1, 2], [3]], [[0, 2], [1]])``.
    """
    where: dict[tuple[int, ...], int] = {}
    unique: list[list[int]] = []
    members: list[list[int]] = []
    for i, p in enumerate(prompts):
        key = tuple(p)
        g = where.get(key)
        if g is None:
            g = where[key] = len(unique)
            unique.append(list(p))
            members.append([])
        members[g].append(i)
    return unique, members


def pack_shared_prompts(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, pad_id: int,
                        max_row_tokens: int | None = None) -> PackedBatch:
    """:func:`pack_groups` over S (prompt, completion) sequences, grouping those with the same prompt; sequence ``i``
    is still ``prompts[i] + completions[i]`` (segments are the caller's indices) and the scored tokens come out
    sequence by sequence in the caller's order, as from :func:`pack_completions`."""
    unique, members = group_by_prompt(prompts)
    batch = pack_groups(unique, [[completions[i] for i in m] for m in members], pad_id=pad_id,
                        max_row_tokens=max_row_tokens)
    # renumber segments to the caller's indices, then put the tokens in the caller's sequence order
    caller = torch.tensor([i for m in members for i in m], dtype=torch.long)
    segments = caller[batch.segments] if batch.segments.numel() else batch.segments
    order = torch.sort(segments, stable=True).indices
    batch.rows, batch.cols, batch.target_cols = batch.rows[order], batch.cols[order], batch.target_cols[order]
    batch.targets, batch.segments = batch.targets[order], segments[order]
    return batch
