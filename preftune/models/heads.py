"""A transformer with a linear head read at the last real token: the body of reward and rule models.

The network is a Hugging Face ``AutoModelForSequenceClassification`` (``num_labels`` = 1 for a reward, C for a
C-class rule model), so a saved model is a plain HF folder. But for decoder models we do **not** use its
``forward``: HF finds the "last token" as the rightmost token that is not ``pad_token_id``; with pad = EOS (the
default model, and every tokenizer whose pad was set to EOS) and completions ending in EOS, that reads the token
*before* the EOS, or the wrong one once padding changes. Here the reading position comes from the attention mask
(the last position whose mask is 1), whatever the padding side or pad token; position ids are computed from the
mask so left padding gives the same hidden states as right padding.

Decoders (anything whose sequence-classification class has a ``score`` linear layer: Llama, Qwen, Mistral,
GPT-2, ...) run their body (``base_model``) and apply ``score`` only at the read positions. They also accept
the *packed batches* of :mod:`preftune.models.logprobs` (``[prompt, chosen, rejected]`` laid end to end with a
block mask, see :func:`~preftune.models.packing.pack_pairs`), where both completions share one
pass over the prompt. Encoders (BERT, RoBERTa, DeBERTa, ...: a ``classifier`` head on their pooled first token)
use HF's own forward and must be right-padded (:func:`pad_rows` does that).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from preftune.errors import PreftuneError
from preftune.models.packing import PackedBatch, block_attention_mask


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row: ``[B, L] -> [B]`` (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * (attention_mask > 0)).amax(-1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens (0 at the first real token): ``[B, L] -> [B, L]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_positions(batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of the last scored token of every sequence of a packed batch: ``[S]`` each.

    For :func:`preftune.models.packing.pack_pairs` every completion token is scored, so this is the completion's
    last token (its EOS): sequence ``2i`` is pair i's chosen, ``2i+1`` its rejected.
    """
    n = batch.segments.shape[0]
    last = torch.full((batch.num_sequences,), -1, dtype=torch.long, device=batch.segments.device)
    last = last.scatter_reduce(0, batch.segments, torch.arange(n, device=last.device), reduce="amax")
    if bool((last < 0).any()):
        raise PreftuneError(f"sequence {int((last < 0).nonzero()[0])} of the packed batch has no completion token")
    return batch.rows[last], batch.target_cols[last]


def pad_rows(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into ``input_ids`` and ``attention_mask`` ``[B, L]`` on ``side`` ("right" or "left")."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got '{side}'")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if not len(s):
            raise PreftuneError(f"sequence {i} is empty")
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


class ScalarHeadModel(nn.Module):
    """A sequence-classification transformer read at the last real token. ``num_outputs`` = 1 gives a scalar.

    Build it with :meth:`from_pretrained` (a hub id, folder, or the default model: its causal-LM weights are
    loaded into the body and a new head is initialised) or :meth:`from_causal_lm` (an already loaded causal LM,
    e.g. a tiny test model). ``lora`` (a dict of peft ``LoraConfig`` fields, e.g. ``{"r": 8}``) trains LoRA
    adapters plus the head instead of every weight.
    """

    def __init__(self, seqcls: nn.Module, lora: dict | None = None):
        super().__init__()
        self.is_decoder = isinstance(getattr(seqcls, "score", None), nn.Linear)
        self.num_outputs = seqcls.config.num_labels
        if lora is not None:
            seqcls = _apply_lora(seqcls, lora, self.is_decoder)
        self.model = seqcls
        self.uses_lora = lora is not None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, *, num_outputs: int = 1, lora: dict | None = None,
                        dtype=None, device: str | None = None, pad_token_id: int | None = None, seed: int | None = None):
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        from preftune.models.loading import load_model

        if seed is not None:  # the new head's initial weights
            torch.manual_seed(seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "some weights were newly initialised": expected for a new head
        try:
            seqcls = load_model(name_or_path, dtype=dtype, device=device, auto_class=AutoModelForSequenceClassification,
                                num_labels=num_outputs)
        finally:
            hf_logging.set_verbosity(verbosity)
        if pad_token_id is not None:
            seqcls.config.pad_token_id = pad_token_id
        return cls(seqcls, lora)

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, *, num_outputs: int = 1, lora: dict | None = None, seed: int = 0):
        """A head on the body of an already loaded causal LM (weights copied; the LM itself is left untouched)."""
        from transformers import AutoModelForSequenceClassification

        config = copy.deepcopy(lm.config)
        config.num_labels = num_outputs
        torch.manual_seed(seed)
        seqcls = AutoModelForSequenceClassification.from_config(config, dtype=next(lm.parameters()).dtype)
        prefix = seqcls.base_model_prefix
        body = getattr(lm, getattr(lm, "base_model_prefix", prefix), None) or lm.base_model
        missing, unexpected = getattr(seqcls, prefix).load_state_dict(body.state_dict(), strict=False)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise PreftuneError(f"could not copy the LM body into a reward model (missing {missing}, unexpected {unexpected})")
        return cls(seqcls.to(next(lm.parameters()).device).eval(), lora)

    # -- the pieces under a peft wrapper ---------------------------------------------------------
    @property
    def seqcls(self) -> nn.Module:
        """The HF sequence-classification model (inside peft's wrapper when LoRA is on; LoRA layers are in place)."""
        return self.model.base_model.model if self.uses_lora else self.model

    @property
    def config(self):
        return self.seqcls.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | PackedBatch, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head outputs at the last real token of every sequence: ``[S, num_outputs]``.

        * padded rows: ``input_ids``, ``attention_mask`` ``[B, L]`` (either padding side) → ``[B, num_outputs]``;
        * a :class:`~preftune.models.packing.PackedBatch` → ``[num_sequences, num_outputs]`` in sequence order
          (for pairs: chosen, rejected, chosen, rejected, ...). Decoders only.
        """
        if isinstance(input_ids, PackedBatch):
            return self._forward_packed(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.is_decoder:
            if not bool((attention_mask[:, 0] > 0).all()):
                raise PreftuneError("encoder reward models read the first token: pad on the right")
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self._read(input_ids, attention_mask, positions_from_mask(attention_mask), rows, last_real_index(attention_mask))

    def _forward_packed(self, batch: PackedBatch) -> torch.Tensor:
        rows, cols = last_token_positions(batch)
        if not self.is_decoder:  # one right-padded row per sequence (layout "separate"): HF's own head
            if batch.block_mask:
                raise PreftuneError("encoder reward models take one row per sequence (layout 'separate'), not packed rows")
            return self.forward(batch.input_ids, (batch.doc_ids >= 0).long())[rows]
        if batch.block_mask:
            mask = block_attention_mask(batch.doc_ids, batch.parent_ids, next(self.parameters()).dtype)
        else:
            mask = (batch.doc_ids >= 0).long()
        return self._read(batch.input_ids, mask, batch.position_ids, rows, cols)

    def _read(self, input_ids, attention_mask, position_ids, rows, cols) -> torch.Tensor:
        """Run the body and apply the head at ``(rows[s], cols[s])`` only: ``[S, num_outputs]``."""
        seqcls = self.seqcls
        body = getattr(seqcls, seqcls.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state  # [R, L, H]
        return seqcls.score(hidden[rows, cols])

    # -- saving ------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, tokenizer=None) -> Path:
        """Write a plain HF sequence-classification folder (LoRA merged into a copy; the live model is untouched)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.uses_lora:
            merged = copy.deepcopy(self.model).merge_and_unload()
        else:
            merged = self.model
        if tokenizer is not None and merged.config.pad_token_id is None:
            merged.config.pad_token_id = tokenizer.pad_token_id
        merged.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return folder


def _apply_lora(seqcls: nn.Module, lora: dict, is_decoder: bool) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    options = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", **lora}
    head = "score" if is_decoder else "classifier"
    options.setdefault("modules_to_save", [head])
    try:
        config = LoraConfig(task_type=TaskType.SEQ_CLS, **options)
    except TypeError as err:
        raise PreftuneError(f"lora: {err}") from None
    return get_peft_model(seqcls, config)
