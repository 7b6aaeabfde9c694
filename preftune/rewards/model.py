"""A trained reward model as a :class:`~preftune.rewards.base.RewardFunction`.

``RewardModel(prompts, responses)`` tokenises each pair as the trainer did (prompt via the chat template or as
plain text, response plus exactly one EOS; :mod:`preftune.data.tokenize`), runs length-sorted batches through
the :class:`~preftune.models.heads.ScalarHeadModel`, reads the scalar at the response's EOS and returns

.. math::  R = (r - \\mu) / \\sigma

where μ and σ are the mean and standard deviation of the raw reward over a reference set of responses
(:meth:`fit_normalization`; identity until fitted). They are stored with the model in ``preftune_reward.json``.

A saved model folder holds the Hugging Face sequence-classification model and tokenizer plus that json::

    {"kind": "reward_model", "format_version": 1, "normalization": {"mean": μ, "std": σ, "count": n} | null,
     "max_length": ..., "use_chat_template": ..., "base_model": ..., "reads": "last real token (the response's EOS)"}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from preftune.data.formats import Prompt
from preftune.models.prompt_format import PROMPT_FORMAT_FILE, uses_chat_template
from preftune.data.tokenize import encode_completion, encode_prompt
from preftune.errors import PreftuneError
from preftune.models.heads import ScalarHeadModel, pad_rows
from preftune.models.modes import eval_mode
from preftune.progress import progress
from preftune.rewards.base import META_FILE, check_batch, read_meta

FORMAT_VERSION = 1


class HeadScorer:
    """Shared machinery of reward and rule models: tokenise (prompt, response[, suffix]), batch, read the head.

    ``max_length``: longer sequences keep their last ``max_length`` tokens (the prompt's start is cut; the
    response and its EOS, where the head reads, are kept). ``None``: no limit.
    """

    kind = "head"
    is_reward_function = True

    def __init__(self, net: ScalarHeadModel, tokenizer, *, max_length: int | None = None, batch_size: int = 8,
                 use_chat_template: bool | None = None, meta: dict | None = None):
        self.net = net
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        # the prompt format is settled here (the pipeline's rule, or the tokenizer's recorded choice) and saved with the model
        self.use_chat_template = uses_chat_template(tokenizer) if use_chat_template is None else bool(use_chat_template)
        self.meta = dict(meta or {})

    def encode(self, prompt: Prompt, response: str, suffix: str | None = None) -> list[int]:
        ids = encode_prompt(self.tokenizer, prompt, use_chat_template=self.use_chat_template)
        ids = ids + encode_completion(self.tokenizer, response)
        if suffix:
            ids = ids + encode_completion(self.tokenizer, suffix)
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[-self.max_length:]
        return ids

    @torch.inference_mode()
    def head_outputs(self, prompts: Sequence[Prompt], responses: Sequence[str], suffixes: Sequence[str] | None = None,
                     *, show_progress: bool = False) -> torch.Tensor:
        """Raw head outputs ``[B, num_outputs]`` (float32, CPU), in the input order."""
        check_batch(prompts, responses, type(self).__name__)
        if not len(responses):
            return torch.zeros((0, self.net.num_outputs))
        suffixes = suffixes if suffixes is not None else [None] * len(responses)
        encoded = [self.encode(p, r, s) for p, r, s in zip(prompts, responses, suffixes)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = torch.empty((len(encoded), self.net.num_outputs), dtype=torch.float32)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        starts = range(0, len(order), self.batch_size)
        bar = progress(starts, desc="scoring", total=len(starts)) if show_progress else starts
        with eval_mode(self.net):
            for start in bar:
                chunk = order[start:start + self.batch_size]
                ids, mask = pad_rows([encoded[i] for i in chunk], pad_id, "right")
                values = self.net(ids.to(self.net.device), mask.to(self.net.device))
                out[torch.tensor(chunk)] = values.float().cpu()
        return out

    # -- saving --------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.net.save_pretrained(folder, self.tokenizer)
        (folder / PROMPT_FORMAT_FILE).write_text(json.dumps({"chat_template": self.use_chat_template}) + "\n")
        meta = {**self.meta, "kind": self.kind, "format_version": FORMAT_VERSION, "max_length": self.max_length,
                "use_chat_template": self.use_chat_template, "reads": "last real token (the response's EOS)",
                **self._meta_fields()}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    def _meta_fields(self) -> dict:
        return {}

    @classmethod
    def _load_parts(cls, folder: str | Path, *, device: str | None = None, dtype=None) -> tuple[ScalarHeadModel, Any, dict]:
        from preftune.models.loading import load_tokenizer

        folder = Path(folder)
        meta = read_meta(folder)
        if meta.get("kind") != cls.kind:
            raise PreftuneError(f"{folder} holds a {meta.get('kind')}, not a {cls.kind}")
        tokenizer = load_tokenizer(str(folder))
        if meta.get("use_chat_template") is None:  # saved before the prompt-format rule: None meant raw plain prompts
            meta["use_chat_template"] = False
        net = ScalarHeadModel.from_pretrained(str(folder), num_outputs=int(meta.get("num_outputs", 1)), dtype=dtype,
                                              device=device)
        return net, tokenizer, meta


class RewardModel(HeadScorer):
    """A scalar reward model; call it on a batch to get normalised rewards ``[B]`` (see the module doc)."""

    kind = "reward_model"

    def __init__(self, net: ScalarHeadModel, tokenizer, *, mean: float = 0.0, std: float = 1.0, count: int = 0, **kwargs):
        super().__init__(net, tokenizer, **kwargs)
        if net.num_outputs != 1:
            raise PreftuneError(f"a reward model has one output, this network has {net.num_outputs}")
        if not std > 0:
            raise PreftuneError(f"reward normalisation: std must be > 0, got {std}")
        self.mean, self.std, self.count = float(mean), float(std), int(count)

    def __repr__(self) -> str:
        return f"RewardModel(mean={self.mean:.4g}, std={self.std:.4g}, max_length={self.max_length})"

    def raw(self, prompts: Sequence[Prompt], responses: Sequence[str], *, show_progress: bool = False) -> torch.Tensor:
        """Un-normalised rewards ``[B]``."""
        return self.head_outputs(prompts, responses, show_progress=show_progress)[:, 0]

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        return normalize(self.raw(prompts, responses), self.mean, self.std)

    def fit_normalization(self, prompts: Sequence[Prompt], responses: Sequence[str], *, show_progress: bool = False) -> tuple[float, float]:
        """Set μ, σ so that the rewards of these (reference) responses have mean 0 and std 1; returns (μ, σ)."""
        raw = self.raw(prompts, responses, show_progress=show_progress)
        self.mean, self.std = normalization_stats(raw)
        self.count = int(raw.numel())
        return self.mean, self.std

    def _meta_fields(self) -> dict:
        norm = None if self.count == 0 and self.mean == 0.0 and self.std == 1.0 else \
            {"mean": self.mean, "std": self.std, "count": self.count}
        return {"num_outputs": 1, "normalization": norm}

    @classmethod
    def load(cls, folder: str | Path, *, device: str | None = None, dtype=None, batch_size: int = 8,
             max_length: int | None | str = "saved") -> RewardModel:
        net, tokenizer, meta = cls._load_parts(folder, device=device, dtype=dtype)
        norm = meta.get("normalization") or {}
        return cls(net, tokenizer, mean=norm.get("mean", 0.0), std=norm.get("std", 1.0), count=norm.get("count", 0),
                   max_length=meta.get("max_length") if max_length == "saved" else max_length, batch_size=batch_size,
                   use_chat_template=meta.get("use_chat_template"), meta=meta)


def normalization_stats(raw: torch.Tensor) -> tuple[float, float]:
    """(μ, σ) of raw rewards ``[N]``: the mean and the population standard deviation (σ = 1 when N < 2 or σ = 0)."""
    if raw.numel() == 0:
        raise PreftuneError("reward normalisation needs at least one reference response")
    mean = raw.double().mean().item()
    std = raw.double().std(unbiased=False).item() if raw.numel() > 1 else 0.0
    return mean, (std if std > 0 else 1.0)


def normalize(raw: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(raw − μ) / σ``, float32. Shape ``[B]``."""
    return ((raw.double() - mean) / std).float()
