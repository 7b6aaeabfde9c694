"""Annotation items from prompts and candidate responses (a ``preftune generate --num-samples K`` file)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from preftune.data.formats import Prompt, prompt_text
from preftune.errors import PreftuneError


def group_candidates(prompts: Sequence[Prompt], candidates: Sequence[tuple[Prompt, str]], where: str) -> list[list[str]]:
    """The distinct candidate responses of each prompt (matched by prompt text), in file order."""
    by_prompt: dict[str, list[str]] = {}
    for prompt, response in candidates:
        bucket = by_prompt.setdefault(prompt_text(prompt).strip(), [])
        if response.strip() and response not in bucket:  # empty answers are not shown (build_items notes the prompt)
            bucket.append(response)
    out = []
    for p in prompts:
        key = prompt_text(p).strip()
        if key not in by_prompt:
            raise PreftuneError(f"{where}: no candidate response for the prompt {prompt_text(p)[:80]!r}")
        out.append(by_prompt[key])
    return out


def build_items(task: str, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]], *, seed: int = 0,
                pairs_per_prompt: int = 1, ranking_size: int = 4) -> tuple[list[tuple[Prompt, list[str]]], list[str]]:
    """Items of ``task``: pairwise / correction: ``pairs_per_prompt`` distinct pairs drawn per prompt; ranking: up to
    ``ranking_size`` responses per prompt; rating / rules: one item per response. Returns (items, notes on prompts
    that gave fewer items than asked, e.g. too few distinct responses)."""
    rng = random.Random(seed)
    items: list[tuple[Prompt, list[str]]] = []
    notes: list[str] = []
    for prompt, cands in zip(prompts, responses):
        cands = list(cands)
        if task in ("pairwise", "correction"):
            pairs = [(i, j) for i in range(len(cands)) for j in range(i + 1, len(cands))]
            if not pairs:
                notes.append(f"prompt {prompt_text(prompt)[:60]!r} has {len(cands)} distinct response(s): no pair")
                continue
            for i, j in rng.sample(pairs, min(pairs_per_prompt, len(pairs))):
                items.append((prompt, [cands[i], cands[j]]))
        elif task == "ranking":
            if len(cands) < 2:
                notes.append(f"prompt {prompt_text(prompt)[:60]!r} has {len(cands)} distinct response: nothing to rank")
                continue
            items.append((prompt, cands[:ranking_size]))
        elif not cands:
            notes.append(f"prompt {prompt_text(prompt)[:60]!r} has no non-empty response")
        else:
            items += [(prompt, [c]) for c in cands]
    return items, notes
