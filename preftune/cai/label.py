"""RL-CAI / RLAIF: AI preference labels from a constitution (Bai et al. 2022, §4.1).

For a pair (a, b) and each of ``num_principles`` principles drawn for it, the feedback model is asked the
constitution's multiple-choice question twice, with a shown as option A and then as option B. The answer is read
from the log-probabilities of the two option letters as the first token of its reply (:meth:`ChatModel.choice_logprobs`,
normalised over the two letters), so every query gives a probability, not a hard vote. Optionally the model first
writes a chain of thought and is then asked for the letter; as in the paper, such probabilities are clamped to
[0.4, 0.6] because a letter after a chain of thought is nearly always given with near-certainty.

The soft label of a pair is

.. math::  P(a ≻ b) = \\frac{1}{|S|} \\sum_{s ∈ S} \\tfrac12 \\big(P_s(A \\mid a, b) + 1 - P_s(A \\mid b, a)\\big)

the both-orders average (:func:`preftune.eval.judges.combine_orders`, which cancels a constant preference for one
position) averaged over the sampled principles S. The position bias is reported as the share of the queries in
which option A wins (0.5: none).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from preftune.cai.constitution import Constitution, Principle
from preftune.data.formats import Prompt
from preftune.errors import PreftuneError
from preftune.data.formats import prompt_text
from preftune.eval.judges import combine_orders
from preftune.generation.chat import ChatModel
from preftune.generation.engine import SamplingParams
from preftune.progress import progress

COT_REQUEST = "Before answering, think it through step by step in a few sentences."
COT_ANSWER = "So which reply is better? Answer with the letter only: {a} or {b}."


@dataclass
class LabelSettings:
    num_principles: int = 2  # principles drawn per pair (without replacement when there are enough)
    chain_of_thought: bool = False
    cot_params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=96, temperature=0.0, do_sample=False))
    cot_clamp: tuple[float, float] | None = (0.4, 0.6)  # Bai et al. 2022 §4.1: chain-of-thought probabilities clamped
    seed: int = 0
    batch_size: int = 16  # pairs per batch of queries


@dataclass
class PairLabel:
    """One pair's label: ``prob`` = P(a ≻ b); per principle, P(option A) with a first and with b first."""

    prob: float
    principles: list[str]
    p_first: list[float]
    p_swapped: list[float]


@dataclass
class LabelReport:
    labels: list[PairLabel]
    position_bias: float  # share of queries in which option A won (a tie counts one half)
    mean_p_option_a: float  # mean P(option A) over all queries
    order_agreement: float  # share of (pair, principle) whose verdict survives swapping the order

    def summary(self) -> dict:
        return {"pairs": len(self.labels), "position_bias_option_a_wins": self.position_bias,
                "mean_p_option_a": self.mean_p_option_a, "order_agreement": self.order_agreement}


def draw_principles(constitution: Constitution, count: int, seed: int, index: int) -> list[Principle]:
    """``count`` principles for pair ``index``, a pure function of (seed, index); distinct when there are enough."""
    rng = random.Random(seed * 1_000_003 + index)
    ps = list(constitution.principles)
    if count <= len(ps):
        return rng.sample(ps, count)
    return [rng.choice(ps) for _ in range(count)]


def option_probability(logprobs: Sequence[float]) -> float:
    """P(first option) from the two options' log-probs (normalised over the two)."""
    a, b = float(logprobs[0]), float(logprobs[1])
    if math.isinf(a) and math.isinf(b):
        return 0.5
    return 1.0 / (1.0 + math.exp(b - a))


def ask(labeller: ChatModel, questions: list[str], options: tuple[str, str], s: LabelSettings) -> list[float]:
    """P(option A) for each rendered question (after a chain of thought when asked, then clamped)."""
    if not s.chain_of_thought:
        convs = [[{"role": "user", "content": q}] for q in questions]
        return [option_probability(lp) for lp in labeller.choice_logprobs(convs, list(options))]
    first = [[{"role": "user", "content": f"{q}\n\n{COT_REQUEST}"}] for q in questions]
    thoughts = labeller.chat(first, s.cot_params)
    follow = COT_ANSWER.format(a=options[0], b=options[1])
    convs = [c + [{"role": "assistant", "content": t}, {"role": "user", "content": follow}] for c, t in zip(first, thoughts)]
    probs = [option_probability(lp) for lp in labeller.choice_logprobs(convs, list(options))]
    if s.cot_clamp is not None:
        lo, hi = s.cot_clamp
        probs = [min(max(p, lo), hi) for p in probs]
    return probs


def label_pairs(prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                constitution: Constitution, labeller: ChatModel, settings: LabelSettings | None = None,
                *, first_index: int = 0, show_progress: bool = True) -> LabelReport:
    """Soft labels P(a_i ≻ b_i) for every pair (see the module docstring). ``first_index`` offsets the pair indices
    that seed the principle draws (so labelling a file in pieces gives the same labels as in one go)."""
    s = settings or LabelSettings()
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise PreftuneError(f"labeller: {len(prompts)} prompts, {len(responses_a)} responses A and {len(responses_b)} "
                            "responses B (they must line up)")
    if s.num_principles < 1:
        raise PreftuneError(f"num_principles must be at least 1, got {s.num_principles}")
    labels: list[PairLabel] = []
    all_first, all_swapped = [], []
    starts = range(0, len(prompts), s.batch_size)
    for start in (progress(starts, desc=f"labelling ({labeller.name})") if show_progress else starts):
        idx = range(start, min(start + s.batch_size, len(prompts)))
        plans = {i: draw_principles(constitution, s.num_principles, s.seed, first_index + i) for i in idx}
        questions: list[str] = []
        for i in idx:
            conv = prompt_text(prompts[i])
            for p in plans[i]:
                questions.append(constitution.render_question(p, conv, responses_a[i], responses_b[i]))
                questions.append(constitution.render_question(p, conv, responses_b[i], responses_a[i]))
        probs = ask(labeller, questions, constitution.options, s)
        pos = 0
        for i in idx:
            k = len(plans[i])
            first, swapped = probs[pos:pos + 2 * k:2], probs[pos + 1:pos + 2 * k:2]
            pos += 2 * k
            pref, _ = combine_orders(first, swapped)
            labels.append(PairLabel(float(np.mean(pref)), [p.id for p in plans[i]], list(first), list(swapped)))
            all_first += first
            all_swapped += swapped
    queries = np.asarray(all_first + all_swapped, dtype=np.float64)
    wins = np.where(queries > 0.5, 1.0, np.where(queries < 0.5, 0.0, 0.5))
    _, details = combine_orders(all_first, all_swapped)
    return LabelReport(labels, float(wins.mean()) if queries.size else float("nan"),
                       float(queries.mean()) if queries.size else float("nan"), details["order_agreement"])


def label_rows(prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
               report: LabelReport) -> list[dict]:
    """Preference rows: the preferred response as ``chosen``, ``label`` = P(chosen ≻ rejected) ∈ [0.5, 1], and the
    evidence (principles, P(option A) in each order)."""
    rows = []
    for p, a, b, lab in zip(prompts, responses_a, responses_b, report.labels):
        a_wins = lab.prob >= 0.5
        rows.append({"prompt": p, "chosen": a if a_wins else b, "rejected": b if a_wins else a,
                     "label": lab.prob if a_wins else 1.0 - lab.prob, "principles": lab.principles,
                     "p_option_a_first": lab.p_first, "p_option_a_swapped": lab.p_swapped, "swapped": not a_wins})
    return rows


class PairwiseLabelReward:
    """The AI labeller behind the reward interface, for online DPO: responses come in consecutive pairs for the same
    prompt (sample 2j and 2j+1 of a rollout with k = 2), and each pair gets rewards ``±½ logit P(a ≻ b)``, so that a
    Bradley–Terry reading σ(r_a − r_b) gives back the labeller's probability."""

    def __init__(self, constitution: Constitution, labeller: ChatModel, settings: LabelSettings | None = None,
                 clip: float = 1e-4):
        self.constitution, self.labeller, self.settings, self.clip = constitution, labeller, settings or LabelSettings(), clip
        self.name = f"cai:{labeller.name}"
        self._calls = 0
        self.last_report: LabelReport | None = None

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        if len(responses) % 2:
            raise PreftuneError(f"the AI labeller scores responses in pairs; got {len(responses)} (use num_samples 2)")
        pa, pb = list(prompts[0::2]), list(prompts[1::2])
        if any(prompt_text(x) != prompt_text(y) for x, y in zip(pa, pb)):
            raise PreftuneError("the AI labeller needs the two responses of a pair to share their prompt")
        report = label_pairs(pa, list(responses[0::2]), list(responses[1::2]), self.constitution, self.labeller,
                             self.settings, first_index=self._calls * 1_000_000, show_progress=False)
        self._calls += 1
        self.last_report = report
        out = torch.zeros(len(responses), dtype=torch.float32)
        for j, lab in enumerate(report.labels):
            p = min(max(lab.prob, self.clip), 1 - self.clip)
            half = 0.5 * math.log(p / (1 - p))
            out[2 * j], out[2 * j + 1] = half, -half
        return out
