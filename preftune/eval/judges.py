"""Pairwise judges: which of two answers to the same prompt is better?

Every judge has one method::

    judge.compare(prompts, responses_a, responses_b) -> JudgeResult   # preferences[i] = P(a_i ≻ b_i) in [0, 1]

Judges here:

* :class:`RewardJudge`: any reward of the reward interface (a reward model, rules, a Python function);
  ``P(a ≻ b) = σ((r_a − r_b) / temperature)`` (Bradley–Terry) or a hard 1 / 0.5 / 0 verdict.
* :class:`LocalLLMJudge`: a causal LM shown both answers, asked for the letter of the better one; the
  probability of ``"A"`` against ``"B"`` is read from its next-token log-probs. Each pair is asked in both
  orders and averaged, which cancels a constant preference for a position (Zheng et al. 2023, "Judging
  LLM-as-a-judge", §3.3: swap positions).
* :class:`HTTPJudge`: the same prompt sent to an OpenAI-compatible ``/chat/completions`` endpoint (base URL,
  model, key from an environment variable) through :class:`preftune.remote.OpenAIClient`, reading ``top_logprobs``
  when the server gives them, else the letter it answered; both orders.
* :class:`HumanJudge`: judgements collected from people (the feedback app writes them as JSON lines
  ``{"prompt", "response_a", "response_b", "preference"}`` and an optional ``annotator``; ``preference`` is ``"a"``, ``"b"``, ``"tie"`` or a
  number in [0, 1]).

:func:`build_judge` makes any of them from a spec string (what ``preftune eval --judges`` takes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from preftune.data.formats import Prompt, prompt_text
from preftune.errors import DataError, PreftuneError
from preftune.rewards.base import score_completions

JUDGE_TEMPLATE = (
    "Two assistants answered the same request. Decide which answer is better: more helpful, more correct and "
    "harmless.\n\n[Request]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
    "Which answer is better? Reply with one letter: A or B."
)


@dataclass
class JudgeResult:
    """``preferences [B]``: P(a ≻ b) per item; ``details``: judge-specific diagnostics (position bias, ...)."""

    preferences: list[float]
    details: dict = field(default_factory=dict)


@runtime_checkable
class PairwiseJudge(Protocol):
    name: str

    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]) -> JudgeResult: ...


def _check(prompts, a, b, who: str) -> None:
    if not (len(prompts) == len(a) == len(b)):
        raise PreftuneError(f"{who}: {len(prompts)} prompts, {len(a)} responses A and {len(b)} responses B (they must line up)")


def render_judge_prompt(prompt: Prompt, a: str, b: str, template: str = JUDGE_TEMPLATE) -> str:
    return template.format(prompt=prompt_text(prompt), a=a, b=b)


def combine_orders(p_first: Sequence[float], p_swapped: Sequence[float]) -> tuple[np.ndarray, dict]:
    """Cancel position bias: ``P(a ≻ b) = ½ (P_A(a, b) + 1 − P_A(b, a))``.

    ``p_first[i]`` is P("A") with a shown as A; ``p_swapped[i]`` is P("A") with b shown as A. Both ``[B]``.
    Diagnostics: ``first_position_rate`` = mean ½(P_A(a,b) + P_A(b,a)) (0.5: no preference for the first slot),
    ``order_agreement`` = fraction of items whose verdict is the same in both orders.
    """
    p1 = np.asarray(p_first, dtype=np.float64)
    p2 = np.asarray(p_swapped, dtype=np.float64)
    pref = 0.5 * (p1 + 1.0 - p2)
    agree = ((p1 > 0.5) & (p2 < 0.5)) | ((p1 < 0.5) & (p2 > 0.5)) | ((p1 == 0.5) & (p2 == 0.5))
    details = {"first_position_rate": float(np.mean(0.5 * (p1 + p2))) if p1.size else float("nan"),
               "order_agreement": float(np.mean(agree)) if p1.size else float("nan")}
    return pref, details


# -- the reward interface ---------------------------------------------------------------------------------


class RewardJudge:
    """Judge with a reward function: ``P(a ≻ b) = σ((r_a − r_b)/T)`` (``mode="bradley_terry"``, Bradley & Terry 1952)
    or ``1 / 0.5 / 0`` when ``r_a − r_b`` is above ``tie_tolerance`` / within it / below (``mode="hard"``)."""

    def __init__(self, reward, *, mode: str = "bradley_terry", temperature: float = 1.0, tie_tolerance: float = 0.0,
                 batch_size: int = 16, name: str | None = None):
        from preftune.rewards.loading import load_reward

        if mode not in ("bradley_terry", "hard"):
            raise PreftuneError(f"reward judge: unknown mode '{mode}' (choose from bradley_terry, hard)")
        if temperature <= 0:
            raise PreftuneError(f"reward judge: temperature must be > 0, got {temperature}")
        self.reward = load_reward(reward)
        self.mode, self.temperature, self.tie_tolerance, self.batch_size = mode, temperature, tie_tolerance, batch_size
        self.name = name or f"reward:{getattr(self.reward, 'name', type(self.reward).__name__)}"

    def _score(self, prompts, responses) -> np.ndarray:
        return score_completions(self.reward, prompts, responses, batch_size=self.batch_size).numpy()

    def compare(self, prompts, responses_a, responses_b) -> JudgeResult:
        _check(prompts, responses_a, responses_b, self.name)
        ra, rb = self._score(prompts, responses_a), self._score(prompts, responses_b)
        diff = ra - rb
        if self.mode == "hard":
            pref = np.where(diff > self.tie_tolerance, 1.0, np.where(diff < -self.tie_tolerance, 0.0, 0.5))
        else:
            pref = 1.0 / (1.0 + np.exp(-diff / self.temperature))
        return JudgeResult(pref.tolist(), {"mean_reward_a": float(ra.mean()) if ra.size else float("nan"),
                                           "mean_reward_b": float(rb.mean()) if rb.size else float("nan"),
                                           "rewards_a": ra.tolist(), "rewards_b": rb.tolist()})


# -- a local LLM --------------------------------------------------------------------------------------------


class LocalLLMJudge:
    """A causal LM as a pairwise judge, asked in both orders; reads P("A") vs P("B") from next-token log-probs."""

    def __init__(self, model, tokenizer, *, template: str = JUDGE_TEMPLATE, batch_size: int = 4,
                 name: str = "llm", max_answer_chars: int = 2000):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.batch_size, self.name, self.max_answer_chars = batch_size, name, max_answer_chars

    def prob_first(self, judge_prompts: Sequence[str]) -> np.ndarray:
        """P("A") renormalised over {"A", "B"} for each rendered judge prompt, ``[B]``."""
        from preftune.generation.scoring import choice_logprobs

        lp = choice_logprobs(self.model, self.tokenizer, list(judge_prompts), ["A", "B"], batch_size=self.batch_size,
                             desc=f"judge {self.name}")
        return lp[:, 0].exp().numpy().astype(np.float64) if lp.numel() else np.zeros(0)

    def compare(self, prompts, responses_a, responses_b) -> JudgeResult:
        _check(prompts, responses_a, responses_b, self.name)
        cut = self.max_answer_chars
        first = [render_judge_prompt(p, a[:cut], b[:cut], self.template) for p, a, b in zip(prompts, responses_a, responses_b)]
        swapped = [render_judge_prompt(p, b[:cut], a[:cut], self.template) for p, a, b in zip(prompts, responses_a, responses_b)]
        probs = self.prob_first(first + swapped)
        n = len(first)
        pref, details = combine_orders(probs[:n], probs[n:])
        details["p_a_first"] = probs[:n].tolist()
        details["p_a_swapped"] = probs[n:].tolist()
        return JudgeResult(pref.tolist(), details)


# -- an OpenAI-compatible HTTP endpoint ---------------------------------------------------------------------


def letter_probability(response: dict) -> float | None:
    """P("A") over {"A", "B"} from one ``/chat/completions`` response: from ``top_logprobs`` of the first token when
    present, else 1.0 / 0.0 for a reply starting with A / B; ``None`` when neither letter can be read."""
    from preftune.remote import choice_probabilities

    probs = choice_probabilities(response, ["A", "B"])
    return None if probs is None else probs[0]


class HTTPJudge:
    """An OpenAI-compatible chat-completions endpoint as a pairwise judge (both orders), through
    :class:`preftune.remote.OpenAIClient` (concurrent requests, retries with back-off, an optional cache on disk).

    ``base_url`` like ``http://localhost:8000/v1``; the key is read from the environment variable ``api_key_env``
    (an empty name sends no key, for local servers). ``retries`` is the client's ``max_retries``. Unreadable replies
    count as ties and are counted in ``details["unreadable"]``.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", template: str = JUDGE_TEMPLATE,
                 timeout: float = 60.0, retries: int = 3, name: str | None = None, cache_dir: str | None = None,
                 concurrency: int = 8, top_logprobs: int = 20):
        from preftune.remote import OpenAIClient

        if not base_url:
            raise PreftuneError("http judge: a base URL is needed (e.g. --judge-base-url http://localhost:8000/v1)")
        self.model, self.template, self.top_logprobs = model, template, top_logprobs
        self.name = name or f"http:{model}"
        try:
            self.client = OpenAIClient(base_url, api_key_env=api_key_env, timeout=timeout, max_retries=retries,
                                       concurrency=concurrency, cache_dir=cache_dir)
        except PreftuneError as err:
            raise PreftuneError(f"http judge: {err}") from None
        self.url = self.client.base_url + "/chat/completions"

    def _body(self, text: str) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": self.top_logprobs}

    def compare(self, prompts, responses_a, responses_b) -> JudgeResult:
        _check(prompts, responses_a, responses_b, self.name)
        items = list(zip(prompts, responses_a, responses_b))
        bodies = [self._body(render_judge_prompt(p, a, b, self.template)) for p, a, b in items]
        bodies += [self._body(render_judge_prompt(p, b, a, self.template)) for p, a, b in items]
        try:
            replies = self.client.chat_completions(bodies, desc=f"judge {self.name}")
        except PreftuneError as err:
            raise PreftuneError(f"http judge: {err}") from None
        probs = [letter_probability(r) for r in replies]
        unreadable = sum(p is None for p in probs)
        probs = [0.5 if p is None else p for p in probs]
        pref, details = combine_orders(probs[:len(items)], probs[len(items):])
        details["unreadable"] = unreadable
        return JudgeResult(pref.tolist(), details)


# -- people -------------------------------------------------------------------------------------------------


def _preference_value(value, path: str, row: int) -> float:
    if isinstance(value, str):
        table = {"a": 1.0, "b": 0.0, "tie": 0.5}
        if value.lower() not in table:
            raise DataError(f"preference must be 'a', 'b', 'tie' or a number in [0, 1], got {value!r}", file=path, row=row, field="preference")
        return table[value.lower()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise DataError(f"preference must be 'a', 'b', 'tie' or a number in [0, 1], got {value!r}", file=path, row=row, field="preference")


class HumanJudge:
    """Human judgements from a JSON-lines file (what the feedback app writes), looked up by (prompt, a, b).

    A judgement stored with the two answers the other way round is used as ``1 − preference``. Several judgements of
    the same pair are averaged. A pair with no judgement is an error naming how many are missing.
    """

    def __init__(self, path: str | Path, name: str = "human"):
        from preftune.data.readers import read_rows

        self.name = name
        self.path = str(path)
        sums: dict[tuple, list[float]] = {}
        for row_number, row in read_rows(path):
            for key in ("prompt", "response_a", "response_b", "preference"):
                if key not in row:
                    raise DataError("missing field", file=self.path, row=row_number, field=key)
            value = _preference_value(row["preference"], self.path, row_number)
            k = (prompt_text(row["prompt"]), row["response_a"], row["response_b"])
            sums.setdefault(k, []).append(value)
        self.table = {k: float(np.mean(v)) for k, v in sums.items()}

    def compare(self, prompts, responses_a, responses_b) -> JudgeResult:
        _check(prompts, responses_a, responses_b, self.name)
        prefs, missing = [], []
        for i, (p, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
            text = prompt_text(p)
            if (text, a, b) in self.table:
                prefs.append(self.table[(text, a, b)])
            elif (text, b, a) in self.table:
                prefs.append(1.0 - self.table[(text, b, a)])
            else:
                missing.append(i)
        if missing:
            raise PreftuneError(f"human judge: {self.path} has no judgement for {len(missing)} of {len(prompts)} pairs "
                                f"(first: item {missing[0]}, prompt {prompt_text(prompts[missing[0]])[:80]!r})")
        return JudgeResult(prefs, {"judgements": len(self.table)})


# -- from a spec string -------------------------------------------------------------------------------------


JUDGE_SPECS = "reward:SPEC, llm, llm:MODEL, http:MODEL, human:FILE"


def build_judge(spec: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", default_model=None,
                default_tokenizer=None, device: str | None = None, batch_size: int = 4, reward_mode: str = "bradley_terry",
                cache_dir: str | None = None) -> PairwiseJudge:
    """A judge from ``"reward:SPEC"`` (see :func:`preftune.rewards.loading.load_reward`), ``"llm"`` (the given default
    model), ``"llm:MODEL"``, ``"http:MODEL"`` (with ``base_url``) or ``"human:FILE"``."""
    kind, _, arg = spec.partition(":")
    if kind == "reward":
        if not arg:
            raise PreftuneError("judge 'reward' needs a reward: reward:FOLDER, reward:module:function or reward:file.yaml")
        return RewardJudge(arg, mode=reward_mode, name=spec)
    if kind == "llm":
        if arg:
            from preftune.models.loading import load_model, load_tokenizer

            return LocalLLMJudge(load_model(arg, device=device), load_tokenizer(arg), batch_size=batch_size, name=spec)
        if default_model is None:
            from preftune.models.loading import load_model, load_tokenizer

            return LocalLLMJudge(load_model(None, device=device), load_tokenizer(None), batch_size=batch_size, name="llm")
        return LocalLLMJudge(default_model, default_tokenizer, batch_size=batch_size, name="llm")
    if kind == "http":
        if not arg:
            raise PreftuneError("judge 'http' needs a model name: http:MODEL (and --judge-base-url)")
        return HTTPJudge(base_url or "", arg, api_key_env=api_key_env, name=spec, cache_dir=cache_dir)
    if kind == "human":
        if not arg:
            raise PreftuneError("judge 'human' needs a file of judgements: human:FILE")
        return HumanJudge(arg, name=spec)
    raise PreftuneError(f"unknown judge '{spec}' (choose from {JUDGE_SPECS})")
