"""Reward model over-optimisation (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization").

A *gold* reward stands in for human preference. Pairs sampled from the policy are labelled by the gold
(:func:`label_pairs`), a *proxy* reward model is trained on those labels (``preftune reward``), and the policy is then
optimised against the proxy in two ways, each measured by both rewards against KL(π ‖ π_init):

* best-of-n (:func:`best_of_n_curve`): for n = 1 … N, the best of n samples by the proxy. Its KL to the policy is
  ``log n − (n−1)/n`` (:func:`bon_kl`; Stiennon et al. 2020 App. G.3, Gao et al. §2.2) — exact for a continuous reward
  distribution, an upper bound for a discrete one (Beirami et al. 2024); :func:`exact_bon_kl` gives the exact value
  of a discrete distribution. The expected rewards of best-of-n are estimated from N ≥ n samples per prompt without
  bias (:func:`bon_expectation`, Gao et al. App. I): averaging over all n-subsets, the sample of proxy rank i
  (1 = lowest of N) is the subset's best with probability C(i−1, n−1) / C(N, n);
* RL (:func:`rl_curve`): RLOO or PPO against the proxy through the shared online loop; each step's rollout is also
  scored by the gold, and its KL is the loop's sampled KL to the initial policy.

Gao et al. plot rewards against ``d = sqrt(KL)``: the proxy keeps rising while the gold rises, peaks and falls — the
over-optimisation (reward hacking) made visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from preftune.errors import PreftuneError
from preftune.generation.engine import GenerationEngine, SamplingParams
from preftune.rewards.base import as_reward_function, score_completions
from preftune.rl.loop import OnlineTrainer


def bon_kl(n: int) -> float:
    """KL(best-of-n ‖ π) = log n − (n−1)/n in nats (continuous reward distribution)."""
    if n < 1:
        raise PreftuneError(f"best-of-n: n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_distribution(probs: Sequence[float], rewards: Sequence[float], n: int) -> np.ndarray:
    """The best-of-n distribution ``[M]`` of a discrete distribution ``probs [M]`` with distinct ``rewards [M]``:
    ``P_n(y) = F(y)^n − F⁻(y)^n`` with F the CDF of the reward (F⁻: strictly below)."""
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise PreftuneError(f"best-of-n distribution: {p.size} probabilities and {r.size} rewards (need the same)")
    if np.unique(r).size != r.size:
        raise PreftuneError("best-of-n distribution: the rewards must be distinct (a tie has no single best)")
    order = np.argsort(r, kind="stable")
    cdf = np.cumsum(p[order])
    cdf /= cdf[-1]
    below = np.concatenate([[0.0], cdf[:-1]])
    out = np.empty_like(p)
    out[order] = cdf ** n - below ** n
    return out


def exact_bon_kl(probs: Sequence[float], rewards: Sequence[float], n: int) -> float:
    """KL(best-of-n ‖ π) in nats of a discrete distribution, by enumeration (see :func:`bon_distribution`)."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum()
    q = bon_distribution(p, rewards, n)
    keep = q > 0
    return float(np.sum(q[keep] * (np.log(q[keep]) - np.log(p[keep]))))


def bon_weights(num: int, n: int) -> np.ndarray:
    """``[num]``: the probability that the sample of rank i (ascending, 0-based) is the best of a uniformly random
    n-subset of ``num`` samples: C(i, n−1) / C(num, n)."""
    if not 1 <= n <= num:
        raise PreftuneError(f"best-of-n: n must be between 1 and the {num} samples, got {n}")
    total = math.comb(num, n)
    return np.array([math.comb(i, n - 1) / total for i in range(num)], dtype=np.float64)


def bon_expectation(proxy: Sequence[float], values: Sequence[float], n: int) -> float:
    """Unbiased estimate, from N samples of one prompt, of E[value of the best-of-n sample by ``proxy``]
    (ties in the proxy go to the earlier sample, as :class:`preftune.rl.best_of_n.BestOfN` does)."""
    pr = np.asarray(proxy, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if pr.shape != v.shape:
        raise PreftuneError(f"best-of-n: {pr.size} proxy rewards and {v.size} values")
    # rank ascending; among equal proxies the earlier sample ranks higher (it wins ties)
    order = sorted(range(pr.size), key=lambda i: (pr[i], -i))
    return float(np.dot(bon_weights(pr.size, n), v[order]))


@dataclass
class CurvePoint:
    method: str  # best_of_n | rl
    x: int  # n for best-of-n, the step for RL
    kl: float
    proxy: float
    gold: float

    @property
    def sqrt_kl(self) -> float:
        return math.sqrt(max(self.kl, 0.0))

    def as_dict(self) -> dict:
        return {**asdict(self), "sqrt_kl": self.sqrt_kl}


def _score(reward, prompts: Sequence, responses: Sequence[str], batch_size: int) -> list[float]:
    return score_completions(reward, prompts, responses, batch_size=batch_size).tolist()


def label_pairs(prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str], gold, *,
                batch_size: int = 16) -> tuple[list[dict], dict]:
    """``preference`` rows (prompt, chosen, rejected, gold rewards) labelled by ``gold``, and counts. Pairs with equal
    gold rewards or identical responses cannot be labelled: they are left out and counted (``ties``, ``identical``)."""
    gold = as_reward_function(gold)
    ga = _score(gold, prompts, responses_a, batch_size)
    gb = _score(gold, prompts, responses_b, batch_size)
    rows, ties, identical = [], 0, 0
    for p, a, b, ra, rb in zip(prompts, responses_a, responses_b, ga, gb):
        if a.strip() == b.strip():
            identical += 1
        elif ra == rb:
            ties += 1
        else:
            chosen, rejected = (a, b) if ra > rb else (b, a)
            rows.append({"prompt": p, "chosen": chosen, "rejected": rejected, "gold_chosen": max(ra, rb),
                         "gold_rejected": min(ra, rb)})
    return rows, {"pairs": len(prompts), "labelled": len(rows), "ties": ties, "identical": identical}


def sample_pairs(engine: GenerationEngine, prompts: Sequence, prompt_ids: Sequence[list[int]], params: SamplingParams
                 ) -> tuple[list[str], list[str]]:
    """Two samples of the policy per prompt."""
    out = engine.generate([list(p) for p in prompt_ids for _ in range(2)], params)
    return out.texts[0::2], out.texts[1::2]


def best_of_n_curve(engine: GenerationEngine, prompts: Sequence, prompt_ids: Sequence[list[int]], proxy, gold, *,
                    max_n: int, params: SamplingParams, ns: Sequence[int] | None = None, batch_size: int = 16
                    ) -> tuple[list[CurvePoint], list[dict]]:
    """Best-of-n for each n in ``ns`` (default: powers of two up to ``max_n``, and ``max_n``): ``max_n`` samples per
    prompt, scored by both rewards, the unbiased best-of-n means over prompts. Returns the points and the samples."""
    proxy, gold = as_reward_function(proxy), as_reward_function(gold)
    ns = sorted(set(ns or [2 ** i for i in range(int(math.log2(max_n)) + 1)] + [max_n]))
    if ns[0] < 1 or ns[-1] > max_n:
        raise PreftuneError(f"best-of-n: every n must be between 1 and max_n={max_n}, got {ns}")
    out = engine.generate([list(p) for p in prompt_ids for _ in range(max_n)], params)
    rep = [p for p in prompts for _ in range(max_n)]
    pr = np.array(_score(proxy, rep, out.texts, batch_size)).reshape(len(prompts), max_n)
    gd = np.array(_score(gold, rep, out.texts, batch_size)).reshape(len(prompts), max_n)
    points = []
    for n in ns:
        points.append(CurvePoint("best_of_n", n, bon_kl(n),
                                 float(np.mean([bon_expectation(pr[j], pr[j], n) for j in range(len(prompts))])),
                                 float(np.mean([bon_expectation(pr[j], gd[j], n) for j in range(len(prompts))]))))
    samples = [{"prompt": p, "response": t, "proxy": float(a), "gold": float(b)}
               for p, t, a, b in zip(rep, out.texts, pr.reshape(-1), gd.reshape(-1))]
    return points, samples


class GoldTracker:
    """The proxy as the RL reward, with the gold also scored on every batch (``gold_means``, ``proxy_means``: one
    entry per call, i.e. per RL step)."""

    is_reward_function = True

    def __init__(self, proxy, gold):
        self.proxy, self.gold = as_reward_function(proxy), as_reward_function(gold)
        self.gold_means: list[float] = []
        self.proxy_means: list[float] = []
        self.name = "proxy (gold tracked)"

    def __call__(self, prompts, responses) -> torch.Tensor:
        r = self.proxy(prompts, responses)
        g = self.gold(prompts, responses)
        self.proxy_means.append(float(r.mean()))
        self.gold_means.append(float(g.mean()))
        return r


def rl_curve(metrics: Sequence[dict], tracker: GoldTracker) -> list[CurvePoint]:
    """RL points from the online loop's per-step metrics (``kl``, ``reward_mean``) and the tracker's gold means.
    The step-0 point (the initial policy, KL 0) is the first rollout's rewards."""
    if len(tracker.gold_means) != len(metrics):
        raise PreftuneError(f"RL curve: {len(metrics)} logged steps but {len(tracker.gold_means)} scored rollouts")
    return [CurvePoint("rl", int(m["step"]), float(m["kl"]), float(m["reward_mean"]), g)
            for m, g in zip(metrics, tracker.gold_means)]


class KLMeasuringTrainer(OnlineTrainer):
    """The online trainer, always running the reference pass so each step's KL is measured even with no KL penalty
    (the shared loop skips that pass when beta = 0)."""

    @property
    def needs_reference(self) -> bool:
        return True


def train_rl(policy, tokenizer, tracker: GoldTracker, prompts: Sequence, prompt_ids: Sequence[list[int]], settings, run, *,
             method: str = "rloo", ref_model=None) -> list[CurvePoint]:
    """Optimise ``policy`` against the tracker's proxy with RLOO (``method="rloo"``) or PPO (a value head on the
    policy) through :class:`preftune.rl.loop.OnlineTrainer` (``settings``: its :class:`OnlineSettings`)."""
    from preftune.models.policy import value_head_for
    from preftune.rl.pg import PGSettings, PolicyGradient
    from preftune.rl.ppo import PPO, PPOSettings
    from preftune.runs import read_metrics

    value_head = None
    if method == "rloo":
        algorithm = PolicyGradient(PGSettings(method="rloo", num_samples=settings.num_samples))
    elif method == "ppo":
        algorithm = PPO(PPOSettings())
        value_head = value_head_for(policy.config.get_text_config().hidden_size).to(next(policy.parameters()).device)
    else:
        raise PreftuneError(f"over-optimisation RL: unknown method '{method}' (rloo or ppo)")
    trainer = KLMeasuringTrainer(policy=policy, tokenizer=tokenizer, algorithm=algorithm, reward_fn=tracker, prompts=prompts,
                            prompt_ids=prompt_ids, settings=settings, run=run, ref_model=ref_model, value_head=value_head)
    trainer.train()
    return rl_curve(read_metrics(run.path), tracker)
