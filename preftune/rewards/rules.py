"""Rule-violation models (Sparrow, Glaese et al. 2022): ``(prompt, response, rule) -> P(rule followed)``.

The rule text goes *after* the response, as a suffix written by :data:`RULE_TEMPLATE` (plus an EOS), and the
head reads the last token, so the model has seen the whole dialogue when it is asked about the rule. One model
can judge many rules (the rule is part of the input).

* **binary** (one output ``z``): P(followed) = σ(z), trained with
  binary cross-entropy on :class:`~preftune.data.formats.RuleExample` rows (``followed`` true / false).
* **multi-class** (``classes = [c_1, ..., c_C]``, C outputs): P(c | prompt, response, rule) = softmax(z)_c, trained
  with cross-entropy on rows with a ``label`` field naming the class, e.g. the kind of a refusal
  (``complied`` / ``refused`` / ``refused_with_reason``). ``rule`` is optional there (it may be the question).
  As a reward, the model gives Σ_{c ∈ reward_classes} P(c).

As a :class:`~preftune.rewards.base.RewardFunction`, a rule model needs its rule fixed (``RuleModel.load(folder,
rule="Do not insult the user")`` or :meth:`RuleModel.for_rule`); ``transform`` says what reward it returns:
``prob`` (P(followed), the default), ``logprob`` (log P(followed)) or ``logit`` (log P / (1 − P)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from preftune.data.formats import Prompt, Source
from preftune.errors import DataError, PreftuneError
from preftune.models.heads import ScalarHeadModel
from preftune.rewards.model import HeadScorer

RULE_TEMPLATE = "\nRule: {rule}\nDid the response follow the rule?"
TRANSFORMS = ("prob", "logprob", "logit")


@dataclass(frozen=True)
class ClassExample:
    """A response labelled with one of C classes (the multi-class rule model's data)."""

    prompt: Prompt
    response: str
    label: str
    rule: str = ""
    source: Source | None = field(default=None, compare=False)


def rule_suffix(rule: str, template: str = RULE_TEMPLATE) -> str:
    return template.format(rule=rule) if rule else ""


def load_class_examples(path: str, *, label_field: str = "label", classes: Sequence[str] | None = None,
                        limit: int | None = None) -> tuple[list[ClassExample], list[str]]:
    """Rows with ``prompt``, ``response``, ``label`` (a class name) and optional ``rule`` → examples and the class list.

    ``classes`` fixes the class order (a label outside it is a :class:`DataError` naming file, row and field);
    by default the classes are the labels found, sorted.
    """
    from preftune.data import fields
    from preftune.data.readers import read_rows

    examples = []
    for number, row in read_rows(path):
        if limit is not None and len(examples) >= limit:
            break
        source = Source(str(path), number)
        label = fields.text(row, label_field, source)
        if classes is not None and label not in classes:
            raise DataError(f"'{label}' is not one of the classes {list(classes)}", file=str(path), row=number, field=label_field)
        rule = row.get("rule") or ""
        if not isinstance(rule, str):
            raise DataError(f"must be text, got {type(rule).__name__}", file=str(path), row=number, field="rule")
        examples.append(ClassExample(fields.prompt(row, source), fields.completion(row, "response", source), label, rule, source))
    if not examples:
        raise DataError("has no rows", file=str(path))
    found = list(classes) if classes is not None else sorted({e.label for e in examples})
    if len(found) < 2:
        raise DataError(f"a multi-class rule model needs at least 2 classes, found {found}", file=str(path), field=label_field)
    return examples, found


class RuleModel(HeadScorer):
    """P(rule followed) (binary) or class probabilities (multi-class) for (prompt, response, rule) triples."""

    kind = "rule_model"

    def __init__(self, net: ScalarHeadModel, tokenizer, *, classes: Sequence[str] | None = None, rule: str | None = None,
                 transform: str = "prob", reward_classes: Sequence[str] | None = None,
                 template: str = RULE_TEMPLATE, **kwargs):
        super().__init__(net, tokenizer, **kwargs)
        self.classes = list(classes) if classes else None
        expected = len(self.classes) if self.classes else 1
        if net.num_outputs != expected:
            raise PreftuneError(f"rule model: the network has {net.num_outputs} outputs but {expected} were expected "
                                f"({'classes ' + str(self.classes) if self.classes else 'binary'})")
        if transform not in TRANSFORMS:
            raise PreftuneError(f"rule model: unknown transform '{transform}' (choose from {', '.join(TRANSFORMS)})")
        if self.classes:
            reward_classes = list(reward_classes or self.meta.get("reward_classes") or self.classes[:1])
            unknown = [c for c in reward_classes if c not in self.classes]
            if unknown:
                raise PreftuneError(f"rule model: reward class '{unknown[0]}' is not one of {self.classes}")
        self.reward_classes = reward_classes
        self.rule, self.transform, self.template = rule, transform, template

    @property
    def multiclass(self) -> bool:
        return self.classes is not None

    def __repr__(self) -> str:
        return f"RuleModel(rule={self.rule!r}, classes={self.classes}, transform={self.transform})"

    def for_rule(self, rule: str, transform: str | None = None) -> RuleModel:
        """The same model (shared weights) as a reward function for ``rule``."""
        return RuleModel(self.net, self.tokenizer, classes=self.classes, rule=rule, transform=transform or self.transform,
                         reward_classes=self.reward_classes, template=self.template, max_length=self.max_length,
                         batch_size=self.batch_size, use_chat_template=self.use_chat_template, meta=self.meta)

    def logits(self, prompts: Sequence[Prompt], responses: Sequence[str], rules: Sequence[str] | str,
               *, show_progress: bool = False) -> torch.Tensor:
        """Head outputs: ``[B]`` logits of "followed" (binary) or ``[B, C]`` class logits (multi-class)."""
        if isinstance(rules, str):
            rules = [rules] * len(responses)
        if len(rules) != len(responses):
            raise PreftuneError(f"rule model: {len(rules)} rules for {len(responses)} responses")
        out = self.head_outputs(prompts, responses, [rule_suffix(r, self.template) for r in rules], show_progress=show_progress)
        return out if self.multiclass else out[:, 0]

    def probabilities(self, prompts: Sequence[Prompt], responses: Sequence[str], rules: Sequence[str] | str) -> torch.Tensor:
        """``[B]`` P(followed) (binary) or ``[B, C]`` class probabilities (multi-class)."""
        z = self.logits(prompts, responses, rules)
        return z.softmax(-1) if self.multiclass else torch.sigmoid(z)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        if self.rule is None and not self.multiclass:
            raise PreftuneError("this rule model judges any rule: give it one (load_reward(folder, rule='...') or "
                                ".for_rule('...')) to use it as a reward")
        z = self.logits(prompts, responses, self.rule or "")
        if self.multiclass:
            idx = [self.classes.index(c) for c in self.reward_classes]
            log_p = torch.logsumexp(z.log_softmax(-1)[:, idx], dim=-1)  # log Σ_{c ∈ reward classes} P(c)
        else:
            log_p = torch.nn.functional.logsigmoid(z)
        return reward_from_log_prob(log_p, self.transform)

    def _meta_fields(self) -> dict:
        return {"num_outputs": len(self.classes) if self.classes else 1, "classes": self.classes,
                "reward_classes": self.reward_classes, "template": self.template}

    @classmethod
    def load(cls, folder: str | Path, *, rule: str | None = None, transform: str = "prob",
             reward_classes: Sequence[str] | None = None, device: str | None = None, dtype=None, batch_size: int = 8) -> RuleModel:
        net, tokenizer, meta = cls._load_parts(folder, device=device, dtype=dtype)
        return cls(net, tokenizer, classes=meta.get("classes"), rule=rule, transform=transform,
                   reward_classes=reward_classes, template=meta.get("template", RULE_TEMPLATE),
                   max_length=meta.get("max_length"), batch_size=batch_size,
                   use_chat_template=meta.get("use_chat_template"), meta=meta)


def reward_from_log_prob(log_p: torch.Tensor, transform: str) -> torch.Tensor:
    """A rule reward from ``log P`` ``[B]``: ``prob`` → P, ``logprob`` → log P, ``logit`` → log P − log(1 − P)."""
    if transform == "prob":
        return log_p.exp().float()
    if transform == "logprob":
        return log_p.float()
    if transform == "logit":
        log_not = torch.log((-torch.expm1(log_p.double())).clamp_min(math.ulp(0.0)))  # log(1 − P), safe near P = 1
        return (log_p.double() - log_not).float()
    raise PreftuneError(f"unknown rule reward transform '{transform}' (choose from {', '.join(TRANSFORMS)})")
