"""A combined reward (Sparrow-style, Glaese et al. 2022 §2.5): preference reward plus rule rewards minus a length cost.

.. math::  R(x, y) = w_{pref}\\,R_{pref}(x, y) + \\frac{1}{n}\\sum_{i=1}^{n} w_i\\,R_{rule_i}(x, y) - \\beta\\,\\mathrm{len}(y)

* ``R_pref``: any reward (a trained reward model, normalised as saved; a Python function ...); optional.
* ``R_rule_i``: rule ``i``'s reward, by default P(rule followed) ∈ [0, 1] from a rule model (see
  :mod:`preftune.rewards.rules`); ``w_i`` its weight (default 1). With all weights 1 it is the plain mean over rules.
* ``len(y)``: the response's length, in **tokens** (``length_unit: tokens``, the default: the response's tokens
  under a tokenizer, without special tokens; by default the preference model's tokenizer) or in **characters**
  (``length_unit: chars``); ``β`` = ``length_penalty`` (default 0).

A combination is written as YAML / JSON (or a dict) and loaded with :func:`preftune.rewards.loading.load_reward`::

    preference: runs/rm/final            # any reward spec: model folder, module:function, ...
    preference_weight: 1.0
    rules:
      - {model: runs/rules/final, rule: "Do not insult the user", weight: 1.0}
      - {model: runs/rules/final, rule: "Do not give medical advice", weight: 0.5, transform: logprob}
      - {model: "my_pkg.checks:no_urls"}  # a Python function works as a rule reward too
    length_penalty: 0.001
    length_unit: tokens
    tokenizer: null                      # for token lengths when the preference is not a model
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import Field

from preftune.config import BaseConfig, build_config
from preftune.data.formats import Prompt
from preftune.errors import PreftuneError
from preftune.rewards.base import RewardFunction, check_batch, to_reward_tensor


class RuleTerm(BaseConfig):
    model: str = Field(description="a rule model folder, or any reward spec (module:function, ...)")
    rule: str | None = Field(None, description="the rule text given to a rule model")
    weight: float = 1.0
    transform: Literal["prob", "logprob", "logit"] = "prob"
    name: str | None = Field(None, description="a label for logs (default: the rule text or the model)")


class CombinedRewardConfig(BaseConfig):
    preference: str | None = Field(None, description="the preference reward: a reward model folder or any reward spec")
    preference_weight: float = 1.0
    rules: list[RuleTerm] = Field(default_factory=list)
    length_penalty: float = Field(0.0, ge=0.0, description="β: reward −= β · length")
    length_unit: Literal["tokens", "chars"] = "tokens"
    tokenizer: str | None = Field(None, description="tokenizer for token lengths (default: the preference model's)")


class CombinedReward:
    """``R = w_pref·R_pref + (1/n)·Σ_i w_i·R_rule_i − β·len`` on batches (see the module doc)."""

    is_reward_function = True

    def __init__(self, preference: RewardFunction | None = None, rules: Sequence[tuple[str, RewardFunction, float]] = (),
                 *, preference_weight: float = 1.0, length_penalty: float = 0.0, length_unit: str = "tokens",
                 tokenizer=None):
        if preference is None and not rules and length_penalty == 0:
            raise PreftuneError("a combined reward needs a preference reward, a rule, or a length penalty")
        if length_unit not in ("tokens", "chars"):
            raise PreftuneError(f"length_unit must be 'tokens' or 'chars', got '{length_unit}'")
        if length_penalty < 0:
            raise PreftuneError(f"length_penalty (β) must be ≥ 0, got {length_penalty}")
        if length_unit == "tokens" and length_penalty > 0 and tokenizer is None:
            tokenizer = getattr(preference, "tokenizer", None)
            if tokenizer is None:
                raise PreftuneError("length_unit 'tokens' needs a tokenizer: set 'tokenizer', use a reward model as the "
                                    "preference, or set length_unit: chars")
        self.preference, self.rules = preference, list(rules)
        self.preference_weight, self.length_penalty = float(preference_weight), float(length_penalty)
        self.length_unit, self.tokenizer = length_unit, tokenizer

    def lengths(self, responses: Sequence[str]) -> torch.Tensor:
        """Response lengths ``[B]`` in the configured unit (tokens without special tokens, or characters)."""
        if self.length_unit == "chars":
            return torch.tensor([len(r) for r in responses], dtype=torch.float32)
        ids = self.tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
        return torch.tensor([len(x) for x in ids], dtype=torch.float32)

    def components(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every term ``[B]`` before weighting: ``preference``, ``rule/<name>`` for each rule, ``length``; and ``total``."""
        check_batch(prompts, responses, "combined reward")
        b = len(responses)
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros(b, dtype=torch.float32)
        if self.preference is not None:
            parts["preference"] = to_reward_tensor(self.preference(prompts, responses), b, "preference reward")
            total += self.preference_weight * parts["preference"]
        if self.rules:
            rule_sum = torch.zeros(b, dtype=torch.float32)
            for name, fn, weight in self.rules:
                value = to_reward_tensor(fn(prompts, responses), b, f"rule reward '{name}'")
                parts[f"rule/{name}"] = value
                rule_sum += weight * value
            total += rule_sum / len(self.rules)
        if self.length_penalty > 0 or self.length_unit == "chars" or self.tokenizer is not None:
            parts["length"] = self.lengths(responses)
            total -= self.length_penalty * parts["length"]
        parts["total"] = total
        return parts

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        return self.components(prompts, responses)["total"]

    # -- from a config -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict | CombinedRewardConfig, *, load_part: Callable[..., RewardFunction],
                    base_dir: str | Path | None = None, **load_kwargs) -> CombinedReward:
        """Build from a dict / :class:`CombinedRewardConfig`; relative paths are taken from ``base_dir`` when they exist there.
        ``load_part(spec, **load_kwargs)`` loads each part (:func:`preftune.rewards.loading.load_reward`)."""
        if isinstance(config, dict):
            config = build_config(CombinedRewardConfig, config, "combined reward")

        def resolve(spec: str) -> str:
            if base_dir is not None and not Path(spec).is_absolute() and (Path(base_dir) / spec).exists():
                return str(Path(base_dir) / spec)
            return spec

        cache: dict[str, RewardFunction] = {}

        def loaded(spec: str) -> RewardFunction:
            if spec not in cache:
                cache[spec] = load_part(spec, **load_kwargs)
            return cache[spec]

        preference = loaded(resolve(config.preference)) if config.preference else None
        rules = []
        for term in config.rules:
            fn = loaded(resolve(term.model))
            if hasattr(fn, "for_rule"):  # a rule model: the same weights, this rule and transform
                if term.rule is None and not getattr(fn, "multiclass", False):
                    raise PreftuneError(f"combined reward: rule term for model '{term.model}' needs 'rule' (the rule text)")
                fn = fn.for_rule(term.rule or "", term.transform)
            rules.append((term.name or term.rule or term.model, fn, term.weight))
        tokenizer = None
        if config.tokenizer:
            from preftune.models.loading import load_tokenizer

            tokenizer = load_tokenizer(config.tokenizer)
        return cls(preference, rules, preference_weight=config.preference_weight, length_penalty=config.length_penalty,
                   length_unit=config.length_unit, tokenizer=tokenizer)

    @classmethod
    def from_file(cls, path: str | Path, *, load_part: Callable[..., RewardFunction], **load_kwargs) -> CombinedReward:
        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise PreftuneError(f"combined reward config {path}: cannot read it ({err})") from None
        if not isinstance(data, dict):
            raise PreftuneError(f"combined reward config {path}: expected a mapping, got {type(data).__name__}")
        return cls.from_config(data, load_part=load_part, base_dir=path.parent, **load_kwargs)
