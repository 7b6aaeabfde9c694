"""The reward-model step of the shared training loop: tokenised items -> batches -> loss and metrics.

Objectives (``objective=``):

* ``bradley_terry``: preference pairs (rankings and corrections arrive expanded to pairs), loss
  :func:`~preftune.losses.reward.bradley_terry_loss` with the pair's margin when ``use_margin`` and the data has
  one, plus ``center_coef ×`` :func:`~preftune.losses.reward.reward_centering_loss`;
* ``plackett_luce``: full rankings (a pair is a ranking of two), :func:`~preftune.losses.reward.plackett_luce_loss`;
* ``rule``: (prompt, response, rule, followed), :func:`~preftune.losses.reward.binary_cross_entropy_loss`;
* ``classes``: (prompt, response, [rule], label) with C classes, :func:`~preftune.losses.reward.multiclass_cross_entropy_loss`.

Pairs are laid out by :func:`preftune.models.packing.pack_pairs` (``[prompt, chosen, rejected]`` per pair: the
prompt is run once for both responses), other sequences by :func:`~preftune.models.packing.pack_completions`;
the head reads the last token of every completion (:class:`~preftune.models.heads.ScalarHeadModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from preftune.data.convert import RULE_FORMATS
from preftune.data.formats import PreferencePair, Ranking, RuleExample
from preftune.data.tokenize import encode_completion, encode_prompt
from preftune.errors import DataError, PreftuneError
from preftune.losses.reward import (
    binary_cross_entropy_loss,
    bradley_terry_loss,
    multiclass_cross_entropy_loss,
    plackett_luce_loss,
    reward_centering_loss,
)
from preftune.models.heads import ScalarHeadModel
from preftune.models.logprobs import BLOCK_MASK_MODEL_TYPES
from preftune.models.packing import PackedBatch, pack_completions, pack_pairs
from preftune.rewards.rules import RULE_TEMPLATE, ClassExample, rule_suffix

OBJECTIVES = ("bradley_terry", "plackett_luce", "rule", "classes")


@dataclass(frozen=True)
class TokenizedItem:
    """One training item: a prompt and its completions (ids), and what the loss needs.

    ``bradley_terry``: completions (chosen, rejected), ``margin``; ``plackett_luce``: K completions, best first;
    ``rule`` / ``classes``: one completion (response + rule suffix), ``label`` (1/0, or the class index).
    """

    prompt_ids: tuple[int, ...]
    completions: tuple[tuple[int, ...], ...]
    margin: float = 0.0
    label: int = 0
    target: float | None = None  # bradley_terry: a soft label P(chosen ≻ rejected) (None: a hard pair)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + sum(len(c) for c in self.completions)


def _too_long(source, n: int, max_length: int) -> DataError:
    return DataError(f"{n} tokens is over the length limit of {max_length} (raise max_length, or skip such rows with "
                     "skip_bad_rows)", file=source.file if source else None, row=source.row if source else None,
                     field="prompt+response")


def tokenize_example(tokenizer, example, objective: str, *, max_length: int | None = None, classes: Sequence[str] = (),
                     use_chat_template: bool | None = None, template: str = RULE_TEMPLATE) -> TokenizedItem:
    """Tokenise one example for ``objective`` (a :class:`DataError` naming file and row when it is too long).

    ``max_length`` bounds each ``prompt + completion`` separately (as TRL and :func:`~preftune.data.tokenize.encode_pair`
    do), not the packed row.
    """
    prompt_ids = tuple(encode_prompt(tokenizer, example.prompt, use_chat_template=use_chat_template))
    if objective == "bradley_terry":
        if not isinstance(example, PreferencePair):
            raise PreftuneError(f"objective bradley_terry trains on preference pairs, got {type(example).__name__}")
        completions = (encode_completion(tokenizer, example.chosen), encode_completion(tokenizer, example.rejected))
        item = TokenizedItem(prompt_ids, tuple(map(tuple, completions)), margin=float(example.margin or 0.0),
                             target=example.label)
    elif objective == "plackett_luce":
        responses = (example.chosen, example.rejected) if isinstance(example, PreferencePair) else example.responses
        if not isinstance(example, (PreferencePair, Ranking)):
            raise PreftuneError(f"objective plackett_luce trains on rankings, got {type(example).__name__}")
        if isinstance(example, PreferencePair) and example.label is not None:
            src = example.source
            raise DataError("a soft label needs objective bradley_terry (plackett_luce ranks hard)",
                            file=src.file if src else None, row=src.row if src else None, field="label")
        item = TokenizedItem(prompt_ids, tuple(tuple(encode_completion(tokenizer, r)) for r in responses))
    elif objective in ("rule", "classes"):
        if objective == "rule" and not isinstance(example, RuleExample):
            raise PreftuneError(f"objective rule trains on rule examples, got {type(example).__name__}")
        if objective == "classes" and not isinstance(example, ClassExample):
            raise PreftuneError(f"objective classes trains on labelled examples, got {type(example).__name__}")
        ids = encode_completion(tokenizer, example.response)
        suffix = rule_suffix(example.rule, template)
        if suffix:
            ids = ids + encode_completion(tokenizer, suffix)
        label = int(example.followed) if objective == "rule" else list(classes).index(example.label)
        item = TokenizedItem(prompt_ids, (tuple(ids),), label=label)
    else:
        raise PreftuneError(f"unknown reward objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
    if max_length is not None:
        longest = len(prompt_ids) + max(len(c) for c in item.completions)
        if longest > max_length:
            raise _too_long(example.source, longest, max_length)
    return item


@dataclass
class RewardBatch:
    """A collated micro-batch: the packed sequences, and per item its margin / label and completion count."""

    packed: PackedBatch
    objective: str
    margins: torch.Tensor  # [N] float (bradley_terry)
    labels: torch.Tensor  # [N] (rule: 0/1, classes: index)
    counts: torch.Tensor  # [N] completions per item
    has_margin: bool
    targets: torch.Tensor | None = None  # [N] soft labels P(chosen ≻ rejected) (bradley_terry; None: all hard)

    def to(self, device) -> RewardBatch:
        return RewardBatch(self.packed.to(device), self.objective, self.margins.to(device), self.labels.to(device),
                           self.counts.to(device), self.has_margin,
                           None if self.targets is None else self.targets.to(device))

    @property
    def num_items(self) -> int:
        return int(self.counts.numel())


def choose_layout(net: ScalarHeadModel, layout: str = "auto") -> str:
    """``packed`` / ``rows`` need a decoder whose body takes a 4-D block mask; everything else runs ``separate``."""
    if layout not in ("auto", "packed", "rows", "separate"):
        raise PreftuneError(f"unknown layout '{layout}' (choose from auto, packed, rows, separate)")
    ok = net.is_decoder and getattr(net.config, "model_type", None) in BLOCK_MASK_MODEL_TYPES
    if not ok or layout == "separate":
        return "separate"
    return "packed" if layout == "auto" else layout


def collate(items: Sequence[TokenizedItem], objective: str, *, pad_id: int, layout: str = "packed",
            max_row_tokens: int | None = None) -> RewardBatch:
    """Lay a micro-batch out for one forward pass (see the module doc)."""
    if objective == "bradley_terry":
        packed = pack_pairs([i.prompt_ids for i in items], [i.completions[0] for i in items],
                            [i.completions[1] for i in items], pad_id=pad_id, layout=layout, max_row_tokens=max_row_tokens)
    else:  # every completion its own sequence (a ranking repeats its prompt once per response)
        prompts = [i.prompt_ids for i in items for _ in i.completions]
        completions = [c for i in items for c in i.completions]
        packed = pack_completions(prompts, completions, pad_id=pad_id, layout=layout, max_row_tokens=max_row_tokens)
    return RewardBatch(
        packed, objective,
        margins=torch.tensor([i.margin for i in items], dtype=torch.float32),
        labels=torch.tensor([i.label for i in items], dtype=torch.long),
        counts=torch.tensor([len(i.completions) for i in items], dtype=torch.long),
        has_margin=any(i.margin != 0.0 for i in items),
        targets=(torch.tensor([1.0 if i.target is None else i.target for i in items], dtype=torch.float32)
                 if any(i.target is not None for i in items) else None),
    )


def ranking_matrix(flat: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Flat rewards ``[Σ K_n]`` (ranking after ranking, best first) → ``[N, max K]`` (padding 0; use ``counts``)."""
    k = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    cols = torch.arange(k, device=flat.device)[None, :]
    valid = cols < counts[:, None]
    index = (starts[:, None] + cols).clamp(max=flat.numel() - 1)
    return torch.where(valid, flat[index], torch.zeros((), dtype=flat.dtype, device=flat.device))


def reward_loss(net: ScalarHeadModel, batch: RewardBatch, *, use_margin: bool = True, center_coef: float = 0.0,
                reduction: str = "mean") -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one micro-batch (``reduction`` over its items: ``mean`` or ``sum``) and its metrics (means)."""
    out = net(batch.packed)  # [S, num_outputs]
    metrics: dict[str, float] = {}
    if batch.objective == "bradley_terry":
        r = out[:, 0].float()
        chosen, rejected = r[0::2], r[1::2]
        margin = batch.margins if (use_margin and batch.has_margin) else None
        loss = bradley_terry_loss(chosen, rejected, margin, reduction=reduction, target=batch.targets)
        metrics["loss/bradley_terry"] = loss.item() / (batch.num_items if reduction == "sum" else 1)
        if center_coef:
            centre = reward_centering_loss(chosen, rejected, reduction=reduction)
            loss = loss + center_coef * centre
            metrics["loss/centering"] = centre.item() / (batch.num_items if reduction == "sum" else 1)
        diff = (chosen - rejected).detach()
        metrics.update({"rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
                        "rewards/margin": diff.mean().item(),
                        "rewards/accuracy": ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()})
    elif batch.objective == "plackett_luce":
        rewards = ranking_matrix(out[:, 0].float(), batch.counts)
        loss = plackett_luce_loss(rewards, batch.counts, reduction=reduction)
        valid = torch.arange(1, rewards.shape[1], device=rewards.device)[None, :] < batch.counts[:, None]
        best_on_top = ((rewards[:, :1] > rewards[:, 1:]) | ~valid).all(-1)
        metrics["rewards/top1_accuracy"] = best_on_top.float().mean().item()
    elif batch.objective == "rule":
        z = out[:, 0].float()
        loss = binary_cross_entropy_loss(z, batch.labels, reduction=reduction)
        metrics["accuracy"] = ((z > 0).long() == batch.labels).float().mean().item()
    elif batch.objective == "classes":
        z = out.float()
        loss = multiclass_cross_entropy_loss(z, batch.labels, reduction=reduction)
        metrics["accuracy"] = (z.argmax(-1) == batch.labels).float().mean().item()
    else:
        raise PreftuneError(f"unknown reward objective '{batch.objective}'")
    return loss, metrics


@dataclass
class RewardStep:
    """The reward-model :class:`~preftune.train.loop.Step`: the loss summed over the micro-batch's items (pairs,
    rankings or labelled examples); the loop divides by the optimiser step's total number of items."""

    use_margin: bool = True
    center_coef: float = 0.0

    def weight(self, batch: RewardBatch) -> float:
        return float(batch.num_items)

    def __call__(self, model: ScalarHeadModel, batch: RewardBatch):
        from preftune.train.loop import StepOutput

        loss, metrics = reward_loss(model, batch, use_margin=self.use_margin, center_coef=self.center_coef, reduction="sum")
        return StepOutput(loss, metrics, batch.packed.num_tokens)


# -- the whole run (what ``preftune reward`` does) ---------------------------------------------------------


def resolve_objective(config, fmt: str) -> str:
    if config.objective != "auto":
        return config.objective
    if fmt in RULE_FORMATS:
        return "rule"
    if config.classes:
        return "classes"
    return "bradley_terry"


def load_training_examples(path: str, config, objective: str, *, limit: int | None = None):
    """Examples for ``objective`` from ``path`` and the class list (``classes``); skipped rows are reported on stderr."""
    import sys

    from preftune.data.convert import detect_file_format
    from preftune.data.convert import load_examples
    from preftune.data.options import ReadOptions
    from preftune.rewards.rules import load_class_examples

    if objective == "classes":
        return load_class_examples(path, label_field=config.label_field, classes=config.classes, limit=limit)
    fmt = detect_file_format(path, config.format)
    kind = {"bradley_terry": "preference", "plackett_luce": "ranking", "rule": "rule"}[objective]
    loaded = load_examples(path, fmt, kind=kind, skip_bad_rows=config.skip_bad_rows, limit=limit, options=ReadOptions.of(config))
    if loaded.skipped:
        print(f"preftune reward: {path}: {loaded.skip_summary()}", file=sys.stderr)
    return loaded.examples, None


def split_held_out(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the *rows* (all examples of a row, e.g. a ranking's pairs, stay together)."""
    if fraction <= 0:
        return examples, []
    rows = sorted({(e.source.file, e.source.row) if e.source else id(e) for e in examples}, key=str)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows), generator=g).tolist()
    n_out = max(1, round(fraction * len(rows)))
    held = {rows[i] for i in order[:n_out]}
    key = lambda e: (e.source.file, e.source.row) if e.source else id(e)  # noqa: E731
    return [e for e in examples if key(e) not in held], [e for e in examples if key(e) in held]


def normalization_sample(pairs: list, n: int, seed: int) -> tuple[list, list[str]]:
    """Up to ``n`` (prompt, response) of the training pairs (both sides of randomly chosen pairs)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pairs), generator=g).tolist()[: max(1, n // 2)]
    prompts = [pairs[i].prompt for i in order] * 2
    return prompts, [pairs[i].chosen for i in order] + [pairs[i].rejected for i in order]


def train_reward(config) -> dict:
    """Train a reward / rule model from a :class:`~preftune.commands.reward.RewardTrainConfig`; returns a summary."""
    import json
    import time

    from preftune.data.convert import detect_file_format
    from preftune.data.convert import tokenize_all
    from preftune.models.prompt_format import decide_chat_template
    from preftune.models.loading import load_tokenizer
    from preftune.rewards.evaluate import evaluate_classes, evaluate_pairs, evaluate_rules
    from preftune.rewards.model import RewardModel
    from preftune.rewards.rules import RuleModel
    from preftune.runs import RunDir
    from preftune.train.loop import LoopSettings, train

    fmt = "classes" if config.objective == "classes" or (config.objective == "auto" and config.classes) else \
        detect_file_format(config.data, config.format)
    objective = resolve_objective(config, fmt)
    examples, classes = load_training_examples(config.data, config, objective, limit=config.limit)
    if config.eval_data:
        held_out, eval_classes = load_training_examples(config.eval_data, config, objective)
        if classes is not None and eval_classes != classes:
            raise PreftuneError(f"{config.eval_data}: its classes {eval_classes} differ from the training data's {classes}; "
                                "name them with --classes")
    else:
        examples, held_out = split_held_out(examples, config.eval_fraction, config.seed)

    tokenizer = load_tokenizer(config.model)
    config = config.model_copy(update={"chat_template": decide_chat_template(tokenizer, config.chat_template, who="preftune reward")})
    skipped: list = []
    items = tokenize_all(examples, lambda ex: tokenize_example(tokenizer, ex, objective, max_length=config.max_length,
                                                              classes=classes or (), use_chat_template=config.chat_template),
                         skip_bad_rows=config.skip_bad_rows, skipped=skipped)
    if skipped:
        import sys

        print(f"preftune reward: skipped {len(skipped)} over-long or bad examples (first: row {skipped[0][0].row}: "
              f"{skipped[0][1]})", file=sys.stderr)
    if not items:
        raise PreftuneError(f"{config.data}: no training examples left")

    lora = None
    if config.lora:
        lora = {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
                "target_modules": config.lora_targets or "all-linear"}
    num_outputs = len(classes) if objective == "classes" else 1
    net = ScalarHeadModel.from_pretrained(config.model, num_outputs=num_outputs, lora=lora, dtype=config.dtype,
                                          pad_token_id=tokenizer.pad_token_id, seed=config.seed)
    layout = choose_layout(net, config.layout)
    pad_id = tokenizer.pad_token_id

    def collate_fn(batch_items):
        return collate(batch_items, objective, pad_id=pad_id, layout=layout, max_row_tokens=config.max_row_tokens)

    run = RunDir(config.output_dir, report_to=config.report_to)
    run.save_config(config)
    settings = LoopSettings(batch_size=config.batch_size, grad_accum=config.grad_accum, max_steps=config.max_steps,
                            num_epochs=config.num_epochs, learning_rate=config.learning_rate, lr_scheduler=config.lr_scheduler,
                            warmup=config.warmup, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                            save_every=config.save_every, seed=config.seed, resume=config.resume)
    t0 = time.perf_counter()
    result = train(net, items, collate_fn, RewardStep(config.use_margin, config.center_coef), settings, run,
                   lengths=[i.num_tokens for i in items], desc=f"reward ({objective})")
    train_seconds = time.perf_counter() - t0
    summary = {"objective": objective, "steps": result.steps, "train_examples": len(items),
               "train_seconds": round(train_seconds, 2), "final": str(run.final_dir),
               "last_metrics": result.last_metrics}
    if not result.accelerator.is_main_process:  # one process normalises, evaluates and saves
        run.close()
        return summary
    net = result.model
    net.eval()

    meta = {"objective": objective, "base_model": config.model, "layout": layout}
    if objective in ("bradley_terry", "plackett_luce"):
        scorer = RewardModel(net, tokenizer, max_length=config.max_length, use_chat_template=config.chat_template,
                             batch_size=config.batch_size, meta=meta)
        if config.normalize:
            pairs = examples if objective == "bradley_terry" else [p for r in examples for p in
                                                                   (r.to_pairs() if hasattr(r, "to_pairs") else [r])]
            prompts, responses = normalization_sample(pairs, config.normalize_examples, config.seed)
            scorer.fit_normalization(prompts, responses, show_progress=True)
    else:
        scorer = RuleModel(net, tokenizer, classes=classes, reward_classes=config.reward_classes,
                           max_length=config.max_length, use_chat_template=config.chat_template,
                           batch_size=config.batch_size, meta=meta)
    scorer.save(run.final_dir)

    if held_out:
        if objective == "bradley_terry":
            report, _ = evaluate_pairs(scorer, held_out)
        elif objective == "plackett_luce":
            report, _ = evaluate_pairs(scorer, [p for r in held_out for p in r.to_pairs()])
        elif objective == "rule":
            report, _ = evaluate_rules(scorer, held_out)
        else:
            report = evaluate_classes(scorer, held_out)
        summary["eval"] = report
        (run.path / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    run.write_model_card(method=f"reward model ({objective})", paper={
        "bradley_terry": "Bradley-Terry on preference pairs, Ouyang et al. 2022", "plackett_luce": "Plackett-Luce on rankings",
        "rule": "a Sparrow-style rule model, Glaese et al. 2022"}.get(objective, "a classifier on labelled responses"),
        base_model=config.model, data={"training data": f"{config.data} ({len(items)} examples)",
                                       "held-out data": f"{config.eval_data or f'{config.eval_fraction:.0%} of the training data'} "
                                                        f"({len(held_out)} examples)" if held_out else "none"},
        metrics={**result.last_metrics, **{f"eval/{k}": v for k, v in summary.get("eval", {}).items() if isinstance(v, (int, float))}})
    if scorer.kind == "reward_model":
        summary["normalization"] = {"mean": scorer.mean, "std": scorer.std, "count": scorer.count}
    run.close()
    return summary
