"""The one reward interface that online RL and evaluation call.

A reward is anything callable on a *batch* of prompts and responses that returns one float per item::

    reward(prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor   # float32, shape [B], on CPU

Implementations: a trained reward model (:class:`preftune.rewards.model.RewardModel`), a rule-violation model
(:class:`preftune.rewards.rules.RuleModel`), a combination (:class:`preftune.rewards.combined.CombinedReward`),
or a plain Python function wrapped by :func:`as_reward_function`. :func:`preftune.rewards.loading.load_reward`
builds any of them from a string (what ``--reward`` flags take).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from preftune.data.formats import Prompt
from preftune.errors import PreftuneError
from preftune.progress import progress

#: The file a saved reward or rule model carries beside its Hugging Face files.
META_FILE = "preftune_reward.json"


@runtime_checkable
class RewardFunction(Protocol):
    """``reward(prompts, responses) -> float32 tensor [B] on CPU``; ``len(prompts) == len(responses) == B``."""

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor: ...


def check_batch(prompts: Sequence[Prompt], responses: Sequence[str], who: str = "reward") -> None:
    """Raise a clear error when the two sides of a batch do not line up, or a response is not text."""
    if isinstance(responses, str) or isinstance(prompts, str):
        raise PreftuneError(f"{who}: prompts and responses must be sequences (a batch), got a single string")
    if len(prompts) != len(responses):
        raise PreftuneError(f"{who}: {len(prompts)} prompts but {len(responses)} responses (they must pair up)")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise PreftuneError(f"{who}: response {i} is a {type(r).__name__}, not a string")


def to_reward_tensor(values: Any, batch_size: int, who: str = "reward") -> torch.Tensor:
    """Turn a function's output (list, tuple, numpy array or tensor of numbers) into float32 ``[B]`` on CPU.

    Raises :class:`PreftuneError` when the length is not ``batch_size`` or a value is NaN / infinite.
    """
    if isinstance(values, torch.Tensor):
        out = values.detach().to("cpu", torch.float32).reshape(-1)
    else:
        try:
            out = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise PreftuneError(f"{who}: returned {type(values).__name__}, not a sequence of numbers ({err})") from None
    if out.numel() != batch_size:
        raise PreftuneError(f"{who}: returned {out.numel()} rewards for a batch of {batch_size}")
    bad = (~torch.isfinite(out)).nonzero().flatten().tolist()
    if bad:
        raise PreftuneError(f"{who}: reward of item {bad[0]} is {out[bad[0]].item()} (rewards must be finite)")
    return out


def score_completions(reward: RewardFunction, prompts: Sequence[Prompt], responses: Sequence[str], *,
                      batch_size: int = 16, desc: str | None = None) -> torch.Tensor:
    """``reward`` over any number of (prompt, response) items, ``batch_size`` at a time: float32 ``[B]`` on CPU.

    The one scoring loop of every caller that scores more than a batch (judges, best-of-N, the frontier, red-team
    harm scores, over-optimisation labels); ``desc`` shows a progress bar over the batches.
    """
    check_batch(prompts, responses, desc or "reward")
    starts = range(0, len(responses), batch_size)
    parts = [to_reward_tensor(reward(list(prompts[s:s + batch_size]), list(responses[s:s + batch_size])),
                              len(responses[s:s + batch_size]), desc or "reward")
             for s in (progress(starts, desc=desc) if desc else starts)]
    return torch.cat(parts) if parts else torch.zeros(0)


class PythonReward:
    """A plain Python function as a :class:`RewardFunction`.

    ``fn`` is either *batched*, ``fn(prompts, responses) -> sequence of B numbers`` (TRL's reward-function
    convention), or *per item*, ``fn(prompt, response) -> number``. ``batched=None`` tells them apart on the
    first call: the function is given the two lists; a sequence (list, tuple, array, tensor) of length B back
    means batched; a single number back, or a TypeError / AttributeError / ValueError, means per item (then it is called
    once per pair). The decision is kept for later calls. Pass ``batched=`` to skip the guess.
    """

    def __init__(self, fn: Callable, *, batched: bool | None = None, name: str | None = None):
        if not callable(fn):
            raise PreftuneError(f"a reward function must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.batched = batched
        self.name = name or getattr(fn, "__qualname__", None) or type(fn).__name__

    def __repr__(self) -> str:
        return f"PythonReward({self.name}, batched={self.batched})"

    def _per_item(self, prompts, responses) -> torch.Tensor:
        values = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            v = self.fn(p, r)
            try:
                values.append(float(v))
            except (TypeError, ValueError):
                raise PreftuneError(f"reward function {self.name}: item {i} gave {type(v).__name__}, not a number") from None
        return to_reward_tensor(values, len(responses), f"reward function {self.name}")

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        check_batch(prompts, responses, f"reward function {self.name}")
        prompts, responses = list(prompts), list(responses)
        who = f"reward function {self.name}"
        if self.batched is False:
            return self._per_item(prompts, responses)
        if self.batched is True:
            return to_reward_tensor(self.fn(prompts, responses), len(responses), who)
        try:  # batched is None: find out on this first call
            out = self.fn(prompts, responses)
        except (TypeError, AttributeError, ValueError):
            self.batched = False
            return self._per_item(prompts, responses)
        if (isinstance(out, torch.Tensor) and out.dim() == 0) or isinstance(out, numbers.Number):
            self.batched = False
            return self._per_item(prompts, responses)
        self.batched = True
        return to_reward_tensor(out, len(responses), who)


def as_reward_function(fn: Callable | RewardFunction, *, batched: bool | None = None) -> RewardFunction:
    """Wrap a plain function (batched or per item, see :class:`PythonReward`); reward objects pass through."""
    if isinstance(fn, (PythonReward,)) or getattr(fn, "is_reward_function", False):
        return fn
    return PythonReward(fn, batched=batched)


def read_meta(folder: str | Path) -> dict:
    """The preftune json of a saved reward / rule model folder."""
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PreftuneError(f"{folder} is not a preftune reward model folder (no {META_FILE})") from None
