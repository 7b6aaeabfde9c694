"""Evaluating reward and rule models: what ``preftune reward-eval`` reports.

* reward model on preference data (pairs; rankings and corrections expanded to pairs): pairwise accuracy
  (r_w > r_l, ties one half), the calibration of the Bradley–Terry probability σ(r_w − r_l) (ECE,
  :func:`~preftune.losses.reward.pairwise_ece`; both on the *raw* rewards, the scale the model was trained on),
  mean rewards of chosen and rejected (normalised when the model carries statistics) and a histogram PNG;
* binary rule model on rule data: accuracy of P(followed) > 0.5, ECE, accuracy per rule, and a histogram;
* multi-class rule model on labelled data: accuracy, accuracy per class and per rule.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from preftune.data.convert import RULE_FORMATS, load_examples
from preftune.data.options import ReadOptions
from preftune.data.formats import PreferencePair, RuleExample
from preftune.errors import PreftuneError
from preftune.losses.reward import binary_ece, pairwise_accuracy, pairwise_ece
from preftune.rewards.base import read_meta


def _plot_histogram(path: Path, series: dict[str, torch.Tensor], title: str, xlabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    values = torch.cat([v for v in series.values() if v.numel()])
    lo, hi = float(values.min()), float(values.max())
    bins = torch.linspace(lo, hi if hi > lo else lo + 1e-6, 31).tolist()
    for label, v in series.items():
        ax.hist(v.tolist(), bins=bins, alpha=0.55, label=f"{label} (n={v.numel()}, mean={v.mean().item():.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_pairs(model, pairs: list[PreferencePair], *, n_bins: int = 10, show_progress: bool = True) -> tuple[dict, dict]:
    """Metrics of a :class:`~preftune.rewards.model.RewardModel` on pairs, and the reward series for the histogram."""
    if not pairs:
        raise PreftuneError("reward-eval: no preference pairs to evaluate")
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    raw = model.raw(prompts, responses, show_progress=show_progress)
    chosen, rejected = raw[: len(pairs)], raw[len(pairs):]
    norm = (raw - model.mean) / model.std
    report = {
        "kind": "reward_model",
        "pairs": len(pairs),
        "accuracy": pairwise_accuracy(chosen, rejected),
        "ece": pairwise_ece(chosen, rejected, n_bins),
        "mean_reward_chosen": norm[: len(pairs)].mean().item(),
        "mean_reward_rejected": norm[len(pairs):].mean().item(),
        "mean_margin_raw": (chosen - rejected).mean().item(),
        "normalization": {"mean": model.mean, "std": model.std},
    }
    return report, {"chosen": norm[: len(pairs)], "rejected": norm[len(pairs):]}


def evaluate_rules(model, examples: list[RuleExample], *, n_bins: int = 10) -> tuple[dict, dict]:
    """Metrics of a binary :class:`~preftune.rewards.rules.RuleModel` on rule examples (each with its own rule)."""
    if not examples:
        raise PreftuneError("reward-eval: no rule examples to evaluate")
    p = model.probabilities([e.prompt for e in examples], [e.response for e in examples], [e.rule for e in examples])
    y = torch.tensor([int(e.followed) for e in examples])
    correct = ((p > 0.5).long() == y).float()
    per_rule: dict[str, list[float]] = defaultdict(list)
    for e, c in zip(examples, correct.tolist()):
        per_rule[e.rule].append(c)
    report = {
        "kind": "rule_model",
        "examples": len(examples),
        "followed": int(y.sum()),  # the labels' balance: the accuracy of always answering the majority label follows
        "accuracy": correct.mean().item(),
        "ece": binary_ece(p, y, n_bins),
        "per_rule": {rule: {"n": len(v), "accuracy": sum(v) / len(v)} for rule, v in per_rule.items()},
    }
    return report, {"followed": p[y == 1], "violated": p[y == 0]}


def evaluate_classes(model, examples) -> dict:
    """Metrics of a multi-class rule model on :class:`~preftune.rewards.rules.ClassExample` rows."""
    z = model.logits([e.prompt for e in examples], [e.response for e in examples], [e.rule for e in examples])
    pred = z.argmax(-1).tolist()
    labels = [model.classes.index(e.label) for e in examples]
    per_class, per_rule = defaultdict(list), defaultdict(list)
    for e, pr, lb in zip(examples, pred, labels):
        per_class[e.label].append(float(pr == lb))
        per_rule[e.rule].append(float(pr == lb))
    return {
        "kind": "rule_model", "classes": model.classes, "examples": len(examples),
        "accuracy": sum(float(p == y) for p, y in zip(pred, labels)) / len(labels),
        "per_class": {c: {"n": len(v), "accuracy": sum(v) / len(v)} for c, v in per_class.items()},
        "per_rule": {r: {"n": len(v), "accuracy": sum(v) / len(v)} for r, v in per_rule.items()},
    }


def evaluate_reward_model(config) -> dict:
    """Run ``preftune reward-eval`` (a :class:`~preftune.commands.reward.RewardEvalConfig`); returns the report dict."""
    import json

    from preftune.data.convert import detect_file_format
    from preftune.rewards.model import RewardModel
    from preftune.rewards.rules import RuleModel, load_class_examples

    meta = read_meta(config.model)
    out_dir = Path(config.output_dir) if config.output_dir else None
    series: dict = {}
    if meta.get("kind") == "reward_model":
        model = RewardModel.load(config.model, batch_size=config.batch_size)
        fmt = detect_file_format(config.data, config.format)
        if fmt in RULE_FORMATS:
            raise PreftuneError(f"{config.data} holds rule labels; a reward model is evaluated on preference data")
        loaded = load_examples(config.data, fmt, kind="preference", skip_bad_rows=config.skip_bad_rows, limit=config.limit,
                               options=ReadOptions.of(config))
        report, series = evaluate_pairs(model, loaded.examples, n_bins=config.n_bins)
        title, xlabel = "Rewards of chosen and rejected responses", "reward" + (" (normalised)" if model.count else "")
    elif meta.get("kind") == "rule_model":
        model = RuleModel.load(config.model, batch_size=config.batch_size)
        if model.multiclass:
            examples, _ = load_class_examples(config.data, classes=model.classes, limit=config.limit)
            report = evaluate_classes(model, examples)
        else:
            fmt = detect_file_format(config.data, config.format)
            if fmt not in RULE_FORMATS:
                raise PreftuneError(f"{config.data} is '{fmt}' data; a rule model is evaluated on rule data "
                                    "(prompt, response, rule, followed)")
            loaded = load_examples(config.data, fmt, kind="rule", skip_bad_rows=config.skip_bad_rows, limit=config.limit,
                                   options=ReadOptions.of(config))
            report, series = evaluate_rules(model, loaded.examples, n_bins=config.n_bins)
        title, xlabel = "P(rule followed) by true label", "P(followed)"
    else:
        raise PreftuneError(f"{config.model}: unknown model kind '{meta.get('kind')}'")
    report["model"], report["data"] = str(config.model), str(config.data)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if series:
            report["histogram"] = str(_plot_histogram(out_dir / "reward_histogram.png", series, title, xlabel))
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    """The report as aligned text lines."""
    lines = [f"{report['kind']} {report['model']} on {report['data']}"]
    for key, value in report.items():
        if key in ("kind", "model", "data", "per_rule", "per_class", "normalization"):
            continue
        lines.append(f"  {key:<22} {value:.4f}" if isinstance(value, float) else f"  {key:<22} {value}")
    for section in ("per_class", "per_rule"):
        if section in report:
            lines.append(f"  {section.replace('_', ' ')}:")
            for name, v in report[section].items():
                lines.append(f"    {v['accuracy']:.4f}  (n={v['n']})  {name}")
    return "\n".join(lines)
