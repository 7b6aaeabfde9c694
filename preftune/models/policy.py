"""A policy's forward pass over (prompt, response) sequences, as online RL needs it: per-token log-probs (tempered as
the sampler drew them), entropies and values, from a value head on the policy's own trunk or a separate critic.

Responses sharing a prompt share its forward pass (the k samples of a group are packed as ``[prompt, y_1, ..., y_k]``
with a block mask, :func:`preftune.models.packing.pack_shared_prompts`), and the LM head runs only where a response
token is predicted. Every per-token output is ``[B, T]``, right-padded, 0 on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from preftune.models.logprobs import (_split, _unwrap, completion_hidden, resolve_layout, token_logprobs, token_logprobs_and_entropy)
from preftune.models.packing import pack_completions, pack_shared_prompts


@dataclass
class PolicyForward:
    """Per-token outputs of one forward pass over (prompt, response) sequences, each [B, T] (0 on padding)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def dense(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter per-token values [N] (sequence by sequence, in order) into [B, T] at ``mask`` (N ones)."""
    out = flat.new_zeros(mask.shape)
    out[mask.bool()] = flat
    return out


def response_mask(sequences: Sequence[Sequence[int]], device=None) -> torch.Tensor:
    """[B, T] with 1 on the first len(seq) positions of each row."""
    width = max((len(s) for s in sequences), default=0)
    lengths = torch.tensor([len(s) for s in sequences])
    return (torch.arange(width)[None, :] < lengths[:, None]).long().to(device)


def _hidden(model, prompt_ids, sequences, pad_id, max_row_tokens, share_prompts: bool = True):
    """Hidden states [N, H] at the positions that predict each response token, and the LM head.

    With the packed layout and ``share_prompts``, responses to the same prompt (the k samples of a group) are laid
    out as one group ``[prompt, y_1, ..., y_k]`` (:func:`preftune.models.packing.pack_shared_prompts`): the prompt
    goes through the decoder once per group instead of k times.
    """
    lm = _unwrap(model)
    device = next(lm.parameters()).device
    layout = resolve_layout(model, "auto")
    if layout == "packed" and share_prompts:
        batch = pack_shared_prompts(prompt_ids, sequences, pad_id=pad_id, max_row_tokens=max_row_tokens).to(device)
    else:
        batch = pack_completions(prompt_ids, sequences, pad_id=pad_id, layout=layout,
                                 max_row_tokens=max_row_tokens).to(device)
    head = lm.get_output_embeddings()
    if _split(lm) is not None:
        return completion_hidden(model, batch), head, batch
    # generic decoder: the whole model with hidden states, one padded row per sequence
    mask = (batch.doc_ids >= 0).long()
    out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False,
                output_hidden_states=True)
    return out.hidden_states[-1][batch.rows, batch.cols], head, batch


def policy_forward(model, prompt_ids: Sequence[Sequence[int]], sequences: Sequence[Sequence[int]], *, pad_id: int,
                   temperature: float = 1.0, value_head: torch.nn.Module | None = None, critic=None,
                   with_entropy: bool = False, max_row_tokens: int | None = 256, share_prompts: bool = True) -> PolicyForward:
    """log pi(y_t | x, y_<t) / T-tempered (as the sampler drew them) for every response token, and optionally the
    entropy of each position's distribution and the values V(x, y_<t).

    Values come from ``value_head`` on the policy's own hidden states (shared trunk), or from ``critic``
    (a :class:`Critic`, a separate model). The LM head runs only at response positions (packed rows, no padding);
    responses sharing a prompt share its forward pass (``share_prompts``, see :func:`_hidden`). Rows hold at most
    ``max_row_tokens`` tokens (a longer group gets its own row): attention is quadratic in the row length.
    The entropy is a diagnostic: computed without grad, in chunks, from the logits already there.
    """
    mask = response_mask(sequences)
    hidden, head, batch = _hidden(model, prompt_ids, sequences, pad_id, max_row_tokens, share_prompts)
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    if with_entropy:
        lp, entropy = token_logprobs_and_entropy(logits, batch.targets)
    else:
        lp, entropy = token_logprobs(logits, batch.targets), None
    device = lp.device
    mask = mask.to(device)
    out = PolicyForward(dense(lp, mask))
    if entropy is not None:
        out.entropy = dense(entropy, mask)
    if value_head is not None:
        out.values = dense(_value(value_head, hidden), mask)
    elif critic is not None:
        out.values = critic(prompt_ids, sequences, pad_id=pad_id, max_row_tokens=max_row_tokens)
    return out


class Critic(torch.nn.Module):
    """A separate value model: a causal LM's decoder plus a scalar head, read at every response position."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.get_text_config().hidden_size if hasattr(lm.config, "get_text_config") else lm.config.hidden_size
        self.head = value_head_for(hidden)

    def forward(self, prompt_ids, sequences, *, pad_id: int, max_row_tokens: int | None = 512) -> torch.Tensor:
        hidden, _, _ = _hidden(self.lm, prompt_ids, sequences, pad_id, max_row_tokens)
        return dense(_value(self.head, hidden), response_mask(sequences, hidden.device))


def _value(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A scalar head on hidden states [N, H] -> [N] fp32. The head keeps its own dtype (fp32 as made by
    :func:`value_head_for`) on a trunk in another (a bf16 model on a GPU): the states are cast to it."""
    weight = getattr(head, "weight", None)
    if weight is not None and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    return head(hidden).squeeze(-1).float()


def value_head_for(hidden_size: int) -> torch.nn.Linear:
    """A scalar value head initialised to output 0 (the critic starts neutral, not random)."""
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head
