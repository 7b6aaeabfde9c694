"""Packing token sequences into rows for one forward pass, without padding.

Sequences of a micro-batch are laid end to end in one (or a few) rows with a 4-D additive block mask and restarting
position ids. A preference pair is laid out ``[prompt, chosen, rejected]``: chosen sees prompt + chosen causally,
rejected sees prompt + rejected (never chosen), and rejected's positions restart at ``len(prompt)``; the prompt is
computed once per pair, and the first rejected token is predicted from the prompt's last position. The k samples of
one prompt are laid out ``[prompt, y_1, ..., y_k]`` the same way (:func:`pack_shared_prompts`). A
:class:`PackedBatch` says, for every scored token, where it sits; :mod:`preftune.models.logprobs` runs the model on it.

Layouts (``layout=``): ``packed`` (the block mask), ``rows`` (one padded row per sequence, an ordinary 2-D mask,
for decoders that do not take a 4-D one), ``separate`` (a pair's two completions in two padded rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

LAYOUTS = ("packed", "rows", "separate")


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
