"""Reading answers from a model's log-probs: next-token choices (letters) and summed log-probs of answers.

Shared by the LLM judge (``"A"`` vs ``"B"``), BBQ and pluralistic questions (option letters), TruthfulQA
(summed log-probs of full answers) and perplexity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from preftune.data.formats import Prompt
from preftune.models.prompt_format import uses_chat_template
from preftune.data.tokenize import encode_prompt
from preftune.errors import PreftuneError
from preftune.progress import progress


def choice_token_ids(tokenizer, choice: str) -> list[int]:
    """The single-token spellings of ``choice`` that may come next (``"A"`` and ``" A"``), deduplicated; when it has
    none (a word the vocabulary splits), the first token of its plain spelling."""
    ids: list[int] = []
    for text in (choice, " " + choice):
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(toks) == 1 and toks[0] not in ids:
            ids.append(toks[0])
    if not ids:
        toks = tokenizer(choice, add_special_tokens=False)["input_ids"]
        if not toks:
            raise PreftuneError(f"the choice {choice!r} has no tokens")
        ids.append(toks[0])
    return ids


@torch.no_grad()
def next_token_logprobs(model, sequences: Sequence[Sequence[int]], *, batch_size: int = 8, desc: str = "scoring") -> torch.Tensor:
    """``log p(next token | sequence)`` over the vocabulary: ``sequences`` (S lists of ids) → ``[S, V]`` fp32.

    Sequences are left-padded per batch (the position ids count real tokens), so the last column is each one's
    next-token distribution.
    """
    device = next(model.parameters()).device
    out = []
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    results: dict[int, torch.Tensor] = {}
    for start in progress(range(0, len(order), batch_size), desc=desc, total=-(-len(order) // batch_size)):
        idx = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            seq = list(sequences[i])
            ids[r, width - len(seq):] = torch.tensor(seq)
            mask[r, width - len(seq):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                       use_cache=False, logits_to_keep=1).logits[:, -1].float()
        for r, i in enumerate(idx):
            results[i] = logits[r].log_softmax(-1).cpu()
    out = [results[i] for i in range(len(sequences))]
    return torch.stack(out) if out else torch.zeros((0, 0))


def choice_logprobs(model, tokenizer, prompts: Sequence[Prompt], choices: Sequence[str], *, batch_size: int = 8,
                    use_chat_template: bool | None = None, desc: str = "scoring choices") -> torch.Tensor:
    """``log P(choice_k)`` renormalised over the K choices, for each prompt: ``[S, K]``.

    A choice's probability is the summed probability of its single-token spellings (``"A"``, ``" A"``); the K values
    are then normalised to sum to one (the mass on every other token is ignored).
    """
    token_sets = [choice_token_ids(tokenizer, c) for c in choices]
    for i in range(len(choices)):
        for j in range(i):
            if set(token_sets[i]) & set(token_sets[j]):
                raise PreftuneError(f"the choices {choices[j]!r} and {choices[i]!r} start with the same token; they cannot be told apart")
    seqs = [encode_prompt(tokenizer, p, use_chat_template=use_chat_template) for p in prompts]
    lp = next_token_logprobs(model, seqs, batch_size=batch_size, desc=desc)
    if lp.numel() == 0:
        return torch.zeros((0, len(choices)))
    per_choice = torch.stack([lp[:, ids].logsumexp(-1) for ids in token_sets], dim=-1)  # [S, K]
    return per_choice.log_softmax(-1)


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompts: Sequence[Prompt], answers: Sequence[str], *, batch_size: int = 8,
                    use_chat_template: bool | None = None, desc: str = "scoring answers") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs ``log π(answer | prompt)`` of S (prompt, answer) pairs and their token counts, ``[S]`` each.

    The answer is tokenised alone (no EOS); after a plain-text prompt (no chat template) it gets a leading space.
    """
    from preftune.models.logprobs import completion_logprobs, resolve_layout
    from preftune.models.packing import pack_completions

    chat = uses_chat_template(tokenizer) if use_chat_template is None else use_chat_template
    p_ids = [encode_prompt(tokenizer, p, use_chat_template=chat) for p in prompts]
    a_ids = [tokenizer((a if chat else " " + a.lstrip()), add_special_tokens=False)["input_ids"] for a in answers]
    layout = resolve_layout(model, "auto")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    sums, counts = [], []
    for s in progress(range(0, len(p_ids), batch_size), desc=desc, total=-(-len(p_ids) // batch_size)):
        batch = pack_completions(p_ids[s:s + batch_size], a_ids[s:s + batch_size], pad_id=pad, layout=layout,
                                 max_row_tokens=1024)
        batch = batch.to(device) if hasattr(batch, "to") else batch
        seq = completion_logprobs(model, batch)
        sums.append(seq.sums.float().cpu())
        counts.append(seq.counts.cpu())
    if not sums:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(sums), torch.cat(counts)
