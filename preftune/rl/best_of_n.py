"""Best-of-N sampling and rejection-sampling fine-tuning (Touvron et al. 2023, Llama 2, sec. 3.2.3).

Best-of-N: sample N responses per prompt, score all with the reward, keep the highest. Rejection-sampling
fine-tuning: the kept responses become SFT data for the policy (the SFT step and loop of
:mod:`preftune.train`), optionally only those whose reward reaches ``min_reward``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from preftune.data.formats import prompt_text
from preftune.generation.engine import GenerationEngine, HFEngine, SamplingParams
from preftune.rewards.base import as_reward_function, score_completions


@dataclass
class BestOfN:
    prompt: object
    prompt_ids: list[int]
    responses: list[str]
    response_ids: list[list[int]]
    rewards: list[float]

    @property
    def best_index(self) -> int:
        """The first response with the highest reward (ties go to the earlier sample)."""
        return max(range(len(self.rewards)), key=lambda i: (self.rewards[i], -i))

    @property
    def best(self) -> str:
        return self.responses[self.best_index]

    @property
    def best_reward(self) -> float:
        return self.rewards[self.best_index]


def best_of_n(model_or_engine, tokenizer, reward_fn, prompts: Sequence, prompt_ids: Sequence[list[int]], *, n: int = 4,
              max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
              stop: tuple[str, ...] = (), seed: int | None = 0, batch_size: int = 32, reward_batch_size: int = 32,
              decode_dtype: str = "auto") -> list[BestOfN]:
    """N samples per prompt (one ``generate`` call, grouped prompt by prompt), scored in batches of ``reward_batch_size``."""
    reward_fn = as_reward_function(reward_fn)
    engine: GenerationEngine = (HFEngine(model_or_engine, tokenizer, batch_size=batch_size, desc=f"best-of-{n}",
                                         decode_dtype=decode_dtype)
                                if isinstance(model_or_engine, torch.nn.Module) else model_or_engine)
    ids = [list(p) for p in prompt_ids for _ in range(n)]
    rep = [p for p in prompts for _ in range(n)]
    out = engine.generate(ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                              top_k=top_k, stop=stop, seed=seed, do_sample=temperature > 0))
    scores = score_completions(reward_fn, rep, out.texts, batch_size=reward_batch_size, desc=f"best-of-{n} rewards").tolist()
    return [BestOfN(prompts[j], list(prompt_ids[j]), out.texts[j * n:(j + 1) * n], out.sequences[j * n:(j + 1) * n],
                    scores[j * n:(j + 1) * n]) for j in range(len(prompts))]


def write_jsonl(results: Sequence[BestOfN], path: str | Path) -> None:
    """JSON lines of prompt, the best ``response`` (a generations file ``preftune eval --generations`` reads), its
    reward, and every sampled response with its reward."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in results:
            f.write(json.dumps({"prompt": r.prompt, "prompt_text": prompt_text(r.prompt), "response": r.best,
                                "best_reward": r.best_reward, "responses": r.responses, "rewards": r.rewards}) + "\n")


def rejection_sampling_items(results: Sequence[BestOfN], tokenizer, min_reward: float | None = None) -> list:
    """SFT items (prompt ids, best response ids ending with exactly one EOS) of the kept best responses."""
    from preftune.data.tokenize import encode_completion
    from preftune.train.sft import SFTItem

    items = []
    for r in results:
        if min_reward is not None and r.best_reward < min_reward:
            continue
        items.append(SFTItem(list(r.prompt_ids), encode_completion(tokenizer, r.best)))
    return items
