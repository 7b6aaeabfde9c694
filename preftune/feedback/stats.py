"""Counts, inter-annotator agreement and position bias of a feedback database.

Agreement is measured per task on *units* answered by two or more annotators (skips left out):

* pairwise: the verdict (item's first response, second, tie); ranking: which response was put first; correction:
  which response was picked as better; rating: the 1–7 rating; rules: each (item, rule) verdict yes / no / unsure.
* percent agreement: over every pair of annotators who answered the same unit, the fraction that gave the same label;
* Cohen's κ (scikit-learn) when exactly two annotators answered the task (on the units both answered);
* Fleiss' κ (statsmodels; Fleiss 1971) on the units with the most common number m ≥ 2 of answers (it needs the same
  number of raters per unit);
* Krippendorff's α (the ``krippendorff`` package; Krippendorff 2011), which takes any pattern of missing answers;
  nominal for every task but rating, which is ordinal.

Position bias (pairwise): how often the answer shown on the left won among decisive (non-tie) choices, with a
Wilson 95% interval; 0.5 means none.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from preftune.data.feedback_db import TASKS, read_submissions


def _label(task: str, answer: dict) -> list[tuple[object, object]]:
    """(unit suffix, label) pairs one answer gives."""
    if task == "pairwise":
        return [(None, str(answer["winner"]))]
    if task == "ranking":
        return [(None, str(answer["order"][0]))]
    if task == "correction":
        return [(None, str(answer["better"]))]
    if task == "rating":
        return [(None, int(answer["rating"]))]
    return [(rule, verdict) for rule, verdict in answer["answers"].items()]


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def agreement(units: dict[object, dict[str, object]], *, ordinal: bool = False) -> dict:
    """Agreement of ``units``: unit → {annotator: label}. Units with fewer than two answers are left out."""
    from sklearn.metrics import cohen_kappa_score

    shared = {u: labels for u, labels in units.items() if len(labels) >= 2}
    out = {"units": len(shared), "percent_agreement": None, "cohen_kappa": None, "fleiss_kappa": None,
           "fleiss_raters": None, "krippendorff_alpha": None}
    if not shared:
        return out
    same = total = 0
    for labels in shared.values():
        for x, y in itertools.combinations(labels.values(), 2):
            same += x == y
            total += 1
    out["percent_agreement"] = same / total
    annotators = sorted({a for labels in shared.values() for a in labels})
    categories = sorted({lab for labels in shared.values() for lab in labels.values()}, key=str)
    code = {c: i for i, c in enumerate(categories)}
    with warnings.catch_warnings():  # κ is undefined (nan, with a warning) when every label is the same
        warnings.simplefilter("ignore")
        if len(annotators) == 2:
            a, b = annotators
            both = [labels for labels in shared.values() if a in labels and b in labels]
            out["cohen_kappa"] = _finite(cohen_kappa_score([code[x[a]] for x in both], [code[x[b]] for x in both]))
        from statsmodels.stats.inter_rater import fleiss_kappa

        m = Counter(len(labels) for labels in shared.values()).most_common(1)[0][0]
        table = np.zeros((0, len(categories)))
        rows = [[sum(1 for lab in labels.values() if lab == c) for c in categories] for labels in shared.values() if len(labels) == m]
        if rows:
            table = np.asarray(rows, dtype=float)
            out["fleiss_kappa"] = _finite(fleiss_kappa(table, method="fleiss"))
            out["fleiss_raters"] = m
        import krippendorff

        data = np.full((len(annotators), len(shared)), np.nan)
        for j, labels in enumerate(shared.values()):
            for i, a in enumerate(annotators):
                if a in labels:
                    data[i, j] = labels[a] if ordinal else code[labels[a]]
        if len(categories) > 1:
            out["krippendorff_alpha"] = _finite(krippendorff.alpha(reliability_data=data,
                                                                   level_of_measurement="ordinal" if ordinal else "nominal"))
    return out


def position_bias(path: str | Path) -> dict:
    from statsmodels.stats.proportion import proportion_confint

    decisive = left = 0
    for s in read_submissions(path, "pairwise"):
        if s.skipped or s.answer["winner"] == "tie":
            continue
        decisive += 1
        left += s.answer["winner"] == s.answer["left"]
    if not decisive:
        return {"left_wins": 0, "decisive": 0, "rate": None, "ci_low": None, "ci_high": None}
    low, high = proportion_confint(left, decisive, alpha=0.05, method="wilson")
    return {"left_wins": left, "decisive": decisive, "rate": left / decisive, "ci_low": float(low), "ci_high": float(high)}


def judge_agreement(path: str | Path, judges: list) -> dict:
    """How often each pairwise judge (``preftune eval``'s judges: a reward model, an LLM judge, ...) agrees with the
    people: on every pairwise item with a decisive human majority (mean of the answers' 1 / ½ / 0 for the item's first
    response, ≠ ½), the fraction where the judge's P(first ≻ second) falls on the same side of ½."""
    items: dict[int, tuple] = {}
    votes: dict[int, list[float]] = defaultdict(list)
    for s in read_submissions(path, "pairwise"):
        if s.skipped:
            continue
        items[s.item_id] = (s.prompt, s.responses)
        w = s.answer["winner"]
        votes[s.item_id].append(0.5 if w == "tie" else float(w == 0))
    decisive = [i for i in items if np.mean(votes[i]) != 0.5]
    out = {}
    for judge in judges:
        if not decisive:
            out[judge.name] = {"items": 0, "agreement": None}
            continue
        prefs = judge.compare([items[i][0] for i in decisive], [items[i][1][0] for i in decisive],
                              [items[i][1][1] for i in decisive]).preferences
        agree = [(p > 0.5) == (np.mean(votes[i]) > 0.5) and p != 0.5 for p, i in zip(prefs, decisive)]
        out[judge.name] = {"items": len(decisive), "agreement": float(np.mean(agree))}
    return out


def feedback_stats(path: str | Path) -> dict:
    """Everything ``preftune annotate stats`` and the stats page show, as a JSON-ready dict."""
    subs = read_submissions(path)
    counts: dict[str, Counter] = defaultdict(Counter)
    units: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for s in subs:
        counts[s.annotator][s.task] += 1
        if s.skipped:
            counts[s.annotator]["skipped"] += 1
            continue
        for suffix, label in _label(s.task, s.answer):
            units[s.task][(s.item_id, suffix)][s.annotator] = label
    tasks = [t for t in TASKS if any(t in c for c in counts.values())]
    return {
        "submissions": len(subs),
        "tasks": tasks,
        "counts": {name: dict(c) for name, c in sorted(counts.items())},
        "agreement": {t: agreement(units[t], ordinal=t == "rating") for t in tasks},
        "position_bias": position_bias(path),
    }


def format_stats(stats: dict) -> str:
    """The statistics as plain text for the terminal."""

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [f"{stats['submissions']} submissions", "", "per annotator and task:"]
    for name, c in stats["counts"].items():
        lines.append(f"  {name}: " + ", ".join(f"{t} {c.get(t, 0)}" for t in stats["tasks"]) + f", skipped {c.get('skipped', 0)}")
    lines += ["", "agreement (units answered by >= 2 annotators):"]
    for t, a in stats["agreement"].items():
        lines.append(f"  {t}: {a['units']} units, percent agreement {f(a['percent_agreement'])}, Cohen's kappa "
                     f"{f(a['cohen_kappa'])}, Fleiss' kappa {f(a['fleiss_kappa'])}, Krippendorff's alpha {f(a['krippendorff_alpha'])}")
    for name, j in stats.get("judges", {}).items():
        lines.append(f"judge {name}: agrees with the people's majority on {f(j['agreement'])} of {j['items']} decisive pairwise items")
    pb = stats["position_bias"]
    lines += ["", f"position bias: the left answer won {pb['left_wins']} of {pb['decisive']} decisive pairwise choices "
              f"({f(pb['rate'])}, 95% interval {f(pb['ci_low'])}-{f(pb['ci_high'])})"]
    return "\n".join(lines)
