"""``preftune reward`` (train), ``preftune reward-eval`` (accuracy, calibration, per-rule accuracy, histogram) and
``preftune score`` (the reward of every (prompt, response) of a data file, as JSON lines)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field

from preftune.config import CHAT_TEMPLATE_HELP, BaseConfig, Command, with_launch_options
from preftune.data.convert import FORMATS, RULE_FORMATS, detect_file_format, load_examples
from preftune.data.options import ReadOptions, with_read_options
from preftune.data.formats import PreferencePair, Ranking, RuleExample, SFTExample, UnpairedExample
from preftune.errors import PreftuneError

DEFAULT_MODEL = "smollm2-135m-instruct"

# What each data format is read as, for scoring and evaluation.
_KIND_OF_FORMAT = {"sft": "sft", "preference": "preference", "hh": "preference", "ranking": "ranking",
                   "correction": "preference", "unpaired": "unpaired", "rule": "rule", "oasst": "ranking",
                   "ratings": "preference", "scored": "preference", "jailbreak": "rule"}


# ---------------------------------------------------------------------------------------------------
# preftune reward


@with_launch_options
@with_read_options
class RewardTrainConfig(BaseConfig):
    data: str = Field("starter:train", description="training data: pairs, rankings, corrections (any preference format), "
                                                   "rule labels, or class labels; starter[:train] for the built-in dataset")
    output_dir: str = Field("runs/reward", description="run folder: config.yaml, metrics.jsonl, checkpoints/, final/")
    model: str = Field(DEFAULT_MODEL, description="base model: a causal LM (hub id, folder, GGUF) or an encoder")
    format: Literal[FORMATS] = Field("auto", description="data format; auto detects it from the first row")
    objective: Literal["auto", "bradley_terry", "plackett_luce", "rule", "classes"] = Field(
        "auto", description="auto: rule for rule data, classes when --classes or --label-field data, else bradley_terry")
    eval_data: str | None = Field(None, description="held-out data (same format), evaluated at the end (eval.json)")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this fraction of the training data instead")
    classes: list[str] | None = Field(None, description="objective classes: the class names, in order")
    label_field: str = Field("label", description="objective classes: the field naming the class")
    reward_classes: list[str] | None = Field(None, description="objective classes: the classes counted as reward")
    use_margin: bool = Field(True, description="use the data's per-pair margin (Llama 2) when it has one")
    center_coef: float = Field(0.0, ge=0.0, description="reward-centring coefficient: + c·(r_w + r_l)^2 (Eisenstein et al. 2023)")
    max_length: int = Field(1024, ge=8, description="longest prompt+response in tokens; longer rows are errors (or skipped)")
    skip_bad_rows: bool = Field(False, description="skip (and count) bad or over-long rows instead of stopping")
    chat_template: bool | None = Field(None, description=CHAT_TEMPLATE_HELP)
    layout: Literal["auto", "packed", "rows", "separate"] = Field(
        "auto", description="packed: [prompt, chosen, rejected] end to end with a block mask; rows: one padded row per pair; separate: prompt+chosen and prompt+rejected rows")
    max_row_tokens: int | None = Field(None, ge=1, description="packed layout: tokens per row (default: one row per pair)")
    lora: bool = Field(False, description="train LoRA adapters and the head instead of every weight")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] | None = Field(None, description="module names for LoRA (default: every linear layer)")
    learning_rate: float = Field(1e-5, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup: float = Field(0.0, ge=0, description="warm-up: a fraction of the steps (< 1) or a number of steps")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    batch_size: int = Field(8, ge=1, description="pairs (or rankings, or examples) per micro-batch, per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    num_epochs: float = Field(1.0, gt=0, description="passes over the data when max_steps is not set")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    seed: int = 0
    dtype: str | None = Field(None, description="fp32, bf16 or auto (fp32 on CPU, bf16 on CUDA)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: none)")
    resume: bool | str = Field(False, description="--resume: continue from the latest checkpoint (or --resume PATH)")
    normalize: bool = Field(True, description="fit reward normalisation (mean 0, std 1) on training responses and store it")
    normalize_examples: int = Field(512, ge=2, description="at most this many responses for the normalisation statistics")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    report_to: list[str] = Field(default_factory=list, description="tensorboard and/or wandb")


def run_train(config: RewardTrainConfig) -> int:
    from preftune.distributed import is_main_process
    from preftune.train.reward import train_reward

    result = train_reward(config)
    print(json.dumps(result, indent=2))
    if config.push_to_hub and is_main_process():  # after the model and its card are saved
        from preftune.runs import push_to_hub

        url = push_to_hub(result["final"], config.push_to_hub, private=config.hub_private)
        print(f"pushed {result['final']} to {url}", file=sys.stderr)
    return 0


TRAIN = Command(
    name="reward",
    help="Train a reward model (Bradley-Terry, margins, Plackett-Luce) or a rule model",
    config_cls=RewardTrainConfig,
    run=run_train,
    description=(
        "Train a reward model on preference pairs (Bradley-Terry, optional per-pair margins and reward centring), on\n"
        "full rankings (Plackett-Luce, or expanded into pairs), on corrections (three pairs each), or a Sparrow-style\n"
        "rule model on (prompt, response, rule, followed) rows, or a multi-class one on labelled rows.\n"
        "The model is saved to OUTPUT_DIR/final (Hugging Face format plus preftune_reward.json)."
    ),
)


# ---------------------------------------------------------------------------------------------------
# preftune reward-eval


@with_read_options
class RewardEvalConfig(BaseConfig):
    model: str = Field(description="a reward or rule model folder saved by preftune reward (or OUTPUT_DIR/final)")
    data: str = Field(description="preference pairs, rankings, corrections or rule labels; starter:test for the built-in split")
    format: Literal[FORMATS] = Field("auto", description="data format; auto detects it from the first row")
    output_dir: str | None = Field(None, description="where report.json and reward_histogram.png go (default: print only)")
    batch_size: int = Field(8, ge=1)
    n_bins: int = Field(10, ge=1, description="calibration bins")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    skip_bad_rows: bool = False
    json: bool = Field(False, description="print the report as JSON")


def run_eval(config: RewardEvalConfig) -> int:
    from preftune.rewards.evaluate import evaluate_reward_model, format_report

    report = evaluate_reward_model(config)
    print(json.dumps(report, indent=2) if config.json else format_report(report))
    return 0


EVAL = Command(
    name="reward-eval",
    help="Pairwise accuracy, calibration, per-rule accuracy and a histogram of a reward model",
    config_cls=RewardEvalConfig,
    run=run_eval,
    positional=("model",),
    description=(
        "Evaluate a reward model on preference data: pairwise accuracy (chosen scored above rejected), calibration\n"
        "(ECE of sigma(r_chosen - r_rejected)), reward statistics and a histogram PNG of chosen vs rejected rewards.\n"
        "A rule model on rule data: accuracy, ECE and accuracy per rule."
    ),
)


# ---------------------------------------------------------------------------------------------------
# preftune score


@with_read_options
class ScoreConfig(BaseConfig):
    model: str = Field(description="a reward: model folder, rule model folder (with --rule), combination .yaml/.json, or module:function")
    data: str = Field(description="any data file of the supported formats (or starter[:train|:test])")
    format: Literal[FORMATS] = Field("auto", description="data format; auto detects it from the first row")
    output: str = Field("-", description="JSON-lines output file ('-': standard output)")
    rule: str | None = Field(None, description="for a rule model on non-rule data: the rule to judge")
    batch_size: int = Field(8, ge=1)
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    skip_bad_rows: bool = False
    raw: bool = Field(False, description="reward models: also write the un-normalised reward as raw_reward")


def scoring_items(examples: list) -> list[dict]:
    """Every distinct (prompt, response) of the examples, in file order, with where it came from.

    Each item: ``{"file", "row", "role", "prompt", "response"}`` (+ ``"rule"`` for rule data, ``"label"`` /
    ``"followed"`` when the data has it). Roles: ``chosen`` / ``rejected`` (pairs; a correction row gives its
    corrected, chosen and rejected responses once each), ``rank_<i>`` (rankings, 0 = best), ``completion`` (SFT,
    unpaired), ``response`` (rule data).
    """
    items, seen = [], set()

    def add(ex, role: str, response: str, **extra) -> None:
        key = (ex.source.file if ex.source else None, ex.source.row if ex.source else id(ex), response, extra.get("rule"))
        if key in seen:
            return
        seen.add(key)
        items.append({"file": ex.source.file if ex.source else None, "row": ex.source.row if ex.source else None,
                      "role": role, "prompt": ex.prompt, "response": response, **extra})

    for ex in examples:
        if isinstance(ex, PreferencePair):
            add(ex, "chosen", ex.chosen)
            add(ex, "rejected", ex.rejected)
        elif isinstance(ex, Ranking):
            for i, r in enumerate(ex.responses):
                add(ex, f"rank_{i}", r)
        elif isinstance(ex, UnpairedExample):
            add(ex, "completion", ex.completion, label=ex.label)
        elif isinstance(ex, SFTExample):
            add(ex, "completion", ex.completion)
        elif isinstance(ex, RuleExample):
            add(ex, "response", ex.response, rule=ex.rule, followed=ex.followed)
        else:
            raise PreftuneError(f"cannot score examples of type {type(ex).__name__}")
    return items


def score_file(config: ScoreConfig) -> list[dict]:
    from preftune.progress import progress
    from preftune.rewards.loading import load_reward
    from preftune.rewards.model import RewardModel
    from preftune.rewards.rules import RuleModel

    fmt = detect_file_format(config.data, config.format)
    loaded = load_examples(config.data, fmt, kind=_KIND_OF_FORMAT[fmt], skip_bad_rows=config.skip_bad_rows, limit=config.limit,
                           options=ReadOptions.of(config))
    if loaded.skipped:
        print(f"preftune score: {loaded.skip_summary()}", file=sys.stderr)
    items = scoring_items(loaded.examples)
    extra = {"batch_size": config.batch_size} if Path(config.model).is_dir() else {}
    reward = load_reward(config.model, **extra)
    per_item_rule = isinstance(reward, RuleModel) and reward.rule is None and fmt in RULE_FORMATS
    if isinstance(reward, RuleModel) and config.rule is not None:
        reward = reward.for_rule(config.rule)
    elif isinstance(reward, RuleModel) and not per_item_rule and not reward.multiclass:
        raise PreftuneError(f"{config.model} is a rule model: give --rule TEXT (or score rule data, which names its rules)")
    out = []
    chunk = max(config.batch_size * 8, 64)
    for start in progress(range(0, len(items), chunk), desc="scoring", total=-(-len(items) // chunk)):
        part = items[start:start + chunk]
        prompts, responses = [i["prompt"] for i in part], [i["response"] for i in part]
        if per_item_rule:
            values = reward.probabilities(prompts, responses, [i["rule"] for i in part])
        else:
            values = reward(prompts, responses)
        raw = reward.raw(prompts, responses) if (config.raw and isinstance(reward, RewardModel)) else None
        for j, item in enumerate(part):
            row = {**item, "reward": float(values[j])}
            if raw is not None:
                row["raw_reward"] = float(raw[j])
            out.append(row)
    return out


def run_score(config: ScoreConfig) -> int:
    rows = score_file(config)
    stream = sys.stdout if config.output == "-" else open(config.output, "w")
    try:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if stream is not sys.stdout:
            stream.close()
    if config.output != "-":
        print(f"preftune score: wrote {len(rows)} rewards to {config.output}", file=sys.stderr)
    return 0


SCORE = Command(
    name="score",
    help="Write the reward of every (prompt, response) of a data file as JSON lines",
    config_cls=ScoreConfig,
    run=run_score,
    description=(
        "Score every (prompt, response) of a data file with a reward (model folder, rule model, combination file,\n"
        "or module:function). One JSON line each: file, row, role (chosen/rejected/rank_i/completion/response),\n"
        "prompt, response and reward (normalised when the model carries normalisation statistics)."
    ),
)

__all__ = ["TRAIN", "EVAL", "SCORE"]
