"""SFT's step: completion-only NLL over packed (or padded) prompt+completion sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from preftune.losses.sft import sft_loss
from preftune.models.logprobs import scored_token_logprobs
from preftune.models.packing import PackedBatch, pack_completions
from preftune.train.loop import StepOutput


@dataclass(frozen=True)
class SFTItem:
    prompt_ids: list[int]
    completion_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


class SFTCollator:
    """``packing=True``: examples end to end in rows of at most ``max_row_tokens`` with a block mask (positions restart,
    no attention across examples, no padding); ``False``: one right-padded row per example."""

    def __init__(self, pad_id: int, *, packing: bool = True, max_row_tokens: int | None = None):
        self.pad_id, self.layout, self.max_row_tokens = pad_id, "packed" if packing else "rows", max_row_tokens

    def __call__(self, items: list[SFTItem]) -> PackedBatch:
        return pack_completions([i.prompt_ids for i in items], [i.completion_ids for i in items], pad_id=self.pad_id,
                                layout=self.layout, max_row_tokens=self.max_row_tokens)


class SFTStep:
    """Loss summed over completion tokens; weight = completion tokens (``normalize="tokens"``: every token of the
    optimizer step weighs the same, across micro-batches and processes) or examples (``"sequences"``)."""

    def __init__(self, normalize: str = "tokens", head_chunk_size: int | None = None):
        if normalize not in ("tokens", "sequences"):
            raise ValueError(f"unknown normalize '{normalize}' (tokens or sequences)")
        self.normalize, self.head_chunk_size = normalize, head_chunk_size

    def weight(self, batch: PackedBatch) -> float:
        return float(batch.targets.numel() if self.normalize == "tokens" else batch.num_sequences)

    def __call__(self, model, batch: PackedBatch) -> StepOutput:
        logps = scored_token_logprobs(model, batch, head_chunk_size=self.head_chunk_size)
        mean = sft_loss(logps, batch.segments, batch.num_sequences, normalize=self.normalize)
        total = mean * self.weight(batch)
        with torch.no_grad():
            metrics = {"loss": mean.item(), "logps/token": logps.mean().item(),
                       "completion_tokens": float(batch.targets.numel())}
        return StepOutput(total, metrics, batch.num_tokens)
