"""The evaluation report: one self-contained HTML page (PNG plots inlined as base64, no scripts, no links to fetch)
and a JSON file with the same numbers.

A :class:`Report` is a list of sections in a fixed order (:data:`SECTIONS`); each holds text, tables (lists of
dicts) and images. Sections nobody filled are not drawn empty: one closing list names each with how to fill it, so
a reader sees what was left out without scrolling past blanks.
The ``plot_*`` functions return PNG bytes drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: (key, title, how to fill it): the report's sections in order.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("summary", "Summary", ""),
    ("win_rates", "Win rates", "give --judges and a baseline (--baseline or --baseline-generations)"),
    ("lengths", "Response lengths", "compare a model with a baseline"),
    ("text_metrics", "Text metrics against references", "give references (--reference-field, or a baseline file with outputs and --text-metrics)"),
    ("frontier", "Reward–KL frontier", "run 'preftune frontier' and pass its frontier.json with --frontier"),
    ("training_curves", "Training curves", "pass run folders with --runs"),
    ("harmful", "Refusal of harmful requests", "give --harmful FILE.csv (or a JailbreakBench artifact FILE.json)"),
    ("over_refusal", "Over-refusal (XSTest-style)", "give --xstest FILE.csv"),
    ("toxicity", "Toxicity of continuations (RealToxicityPrompts-style)", "give --toxicity FILE.jsonl"),
    ("leaderboard", "Leaderboard (Bradley–Terry ratings)", "give --models A B C ... and --judges"),
    ("judge_agreement", "Judge–human agreement", "give --human-judgements FILE and --judges"),
    ("truthfulqa", "TruthfulQA multiple choice", "give --truthfulqa FILE.csv"),
    ("bbq", "BBQ bias", "give --bbq FILE.jsonl"),
    ("pluralistic", "Distributional (pluralistic) alignment", "give --pluralistic FILE.jsonl"),
    ("red_teaming", "Red teaming with language models", "run 'preftune redteam' and pass its summary.json with --redteam"),
    ("overoptimization", "Reward over-optimisation", "run 'preftune overoptimization' and pass its overoptimization.json with --overoptimization"),
    ("examples", "Examples", ""),
)
SECTION_KEYS = tuple(k for k, _, _ in SECTIONS)


@dataclass
class Section:
    key: str
    title: str
    text: str = ""
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)
    data: Any = None


class Report:
    def __init__(self, title: str = "preftune evaluation", *, hide_not_run: bool = False):
        self.title = title
        self.hide_not_run = hide_not_run  # a command's own report (redteam, overoptimization): no "Not run" list
        self.sections: dict[str, Section] = {}
        self.created = _dt.datetime.now().isoformat(timespec="seconds")

    def section(self, key: str) -> Section:
        if key not in SECTION_KEYS:
            raise KeyError(f"unknown report section '{key}' (sections: {', '.join(SECTION_KEYS)})")
        if key not in self.sections:
            title = next(t for k, t, _ in SECTIONS if k == key)
            self.sections[key] = Section(key, title)
        return self.sections[key]

    def add(self, key: str, *, text: str = "", tables: Sequence[tuple[str, list[dict]]] = (),
            images: Sequence[tuple[str, bytes]] = (), data: Any = None) -> Section:
        s = self.section(key)
        if text:
            s.text = (s.text + "\n\n" + text).strip()
        s.tables.extend(tables)
        s.images.extend(images)
        if data is not None:
            if isinstance(s.data, dict) and isinstance(data, dict):
                s.data.update(data)
            else:
                s.data = data
        return s

    # -- output ------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"title": self.title, "created": self.created,
                "sections": {k: ({"title": s.title, "text": s.text, "tables": [{"caption": c, "rows": r} for c, r in s.tables],
                                  "images": [c for c, _ in s.images], "data": s.data} if (s := self.sections.get(k)) else None)
                             for k in SECTION_KEYS},
                "not_run": [k for k in SECTION_KEYS if k not in self.sections]}

    def to_html(self) -> str:
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(self.title)}</h1>",
                 f"<p class='meta'>written {html.escape(self.created)} by preftune</p><nav><ul>"]
        # a command's own report (redteam, overoptimization) lists no unrun sections at all
        missing = [] if self.hide_not_run else [(key, title, how) for key, title, how in SECTIONS if key not in self.sections]
        for key, title, _ in SECTIONS:
            if key in self.sections:
                parts.append(f"<li><a href='#{key}'>{html.escape(title)}</a></li>")
        if missing:
            parts.append("<li><a href='#not_run' class='off'>Not run</a></li>")
        parts.append("</ul></nav>")
        for key, title, how in SECTIONS:
            s = self.sections.get(key)
            if s is None:
                continue
            parts.append(f"<section id='{key}'><h2>{html.escape(title)}</h2>")
            for para in filter(None, s.text.split("\n\n")):
                parts.append(f"<p>{html.escape(para)}</p>")
            for caption, rows in s.tables:
                parts.append(_table_html(caption, rows))
            for caption, png in s.images:
                b64 = base64.b64encode(png).decode()
                parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'/>"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            parts.append("</section>")
        if missing:
            items = "".join(f"<li>{html.escape(title)}{': ' + html.escape(how) if how else ''}</li>" for _, title, how in missing)
            parts.append(f"<section id='not_run' class='off'><h2>Not run</h2><ul>{items}</ul></section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, output_dir: str | Path) -> tuple[Path, Path]:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        html_path, json_path = out / "report.html", out / "report.json"
        html_path.write_text(self.to_html(), encoding="utf-8")
        json_path.write_text(json.dumps(_jsonable(self.to_json()), indent=2), encoding="utf-8")
        return html_path, json_path


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}caption{font-weight:600;text-align:left;padding:.3em 0}"
    "img{max-width:100%}figcaption{font-size:.85em;color:#555}.off{color:#999}.meta{color:#666;font-size:.85em}"
    "td.text{max-width:420px;white-space:pre-wrap}"
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if v is None:
        return "–"
    return str(v)


def _table_html(caption: str, rows: list[dict]) -> str:
    if not rows:
        return f"<p class='off'>{html.escape(caption)}: no rows.</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = [f"<table><caption>{html.escape(caption)}</caption><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr>"]
    for r in rows:
        cells = []
        for c in cols:
            v = _fmt(r.get(c))
            cls = " class='text'" if len(v) > 60 else ""
            cells.append(f"<td{cls}>{html.escape(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item):
        return _jsonable(x.item())
    if isinstance(x, Path):
        return str(x)
    return x


# -- plots --------------------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_win_rates(rows: Sequence[dict]) -> bytes:
    """Bars of win / tie / loss and the win rate with 95 % intervals per judge. ``rows``: ``{"judge", "win": Rate, ...}``."""
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    names = [r["judge"] for r in rows]
    keys = [k for k in ("win_rate", "lc_win_rate", "win", "tie", "loss") if any(r.get(k) for r in rows)]
    width = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        vals = [r[key]["value"] if r.get(key) else float("nan") for r in rows]
        lo = [r[key]["value"] - r[key]["ci_low"] if r.get(key) and r[key].get("ci_low") is not None else 0 for r in rows]
        hi = [r[key]["ci_high"] - r[key]["value"] if r.get(key) and r[key].get("ci_high") is not None else 0 for r in rows]
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=key.replace("_", " "))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (95% bootstrap CI)")
    ax.legend(fontsize=8, ncol=len(keys))
    return _png(plt, fig)


def plot_length_histogram(model_lengths: Sequence[int], baseline_lengths: Sequence[int] | None = None,
                          labels: tuple[str, str] = ("model", "baseline"), unit: str = "tokens") -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    data = [list(model_lengths)] + ([list(baseline_lengths)] if baseline_lengths is not None else [])
    top = max((max(d) for d in data if d), default=1)
    bins = min(30, max(5, int(top) + 1))
    for d, lab in zip(data, labels):
        ax.hist(d, bins=bins, range=(0, top), alpha=0.55, label=f"{lab} (mean {sum(d) / max(1, len(d)):.1f})")
    ax.set_xlabel(f"response length ({unit})")
    ax.set_ylabel("responses")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_frontier(points: Sequence[dict]) -> bytes:
    """Mean reward against KL(π‖π_ref), one labelled point per checkpoint with both intervals."""
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    for p in points:
        kl, r = p["kl"], p["mean_reward"]
        xerr = [[kl - p["kl_ci"][0]], [p["kl_ci"][1] - kl]]
        yerr = [[r - p["reward_ci"][0]], [p["reward_ci"][1] - r]]
        ax.errorbar([kl], [r], xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(str(p["name"]), (kl, r), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("KL(π ‖ π_ref) (nats, sampled estimate)")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def plot_training_curves(runs: dict[str, list[dict]], keys: Sequence[str] | None = None, max_panels: int = 6) -> bytes:
    """One panel per metric (numeric keys of metrics.jsonl other than ``step``), one line per run."""
    if keys is None:
        seen: dict[str, None] = {}
        for rows in runs.values():
            for row in rows:
                for k, v in row.items():
                    if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        seen.setdefault(k)
        keys = list(seen)[:max_panels]
    keys = list(keys) or ["(no numeric metrics)"]
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    plt, fig = _figure(4.0 * cols, 2.8 * nrows)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0 and len(runs) > 1:
            ax.legend(fontsize=7)
    return _png(plt, fig)


def plot_rates_by_group(rows: Sequence[dict], *, group_key: str, value_key: str = "any_refusal", title: str = "") -> bytes:
    """Horizontal bars of a rate (with interval) per group (XSTest type, harm category)."""
    plt, fig = _figure(6.4, max(2.4, 0.28 * len(rows) + 1))
    ax = fig.add_subplot(111)
    names = [str(r[group_key]) for r in rows]
    vals = [r[value_key]["value"] for r in rows]
    err = [[r[value_key]["value"] - r[value_key]["ci_low"] for r in rows], [r[value_key]["ci_high"] - r[value_key]["value"] for r in rows]]
    colors = ["#c44" if r.get("label") == "unsafe" else "#48c" for r in rows]
    ax.barh(range(len(rows)), vals, xerr=err, capsize=2, color=colors)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(value_key.replace("_", " ") + " rate (95% CI)")
    if title:
        ax.set_title(title, fontsize=9)
    return _png(plt, fig)


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plot_overoptimization(points: Sequence[dict]) -> bytes:
    """Gold and proxy reward against sqrt(KL) (Gao et al. 2022, Fig. 1), one panel per method. ``points``: dicts with
    ``method`` (best_of_n | rl), ``x`` (n or step), ``kl``, ``sqrt_kl``, ``gold``, ``proxy``. RL points are per-step
    rollout estimates, noisy with a few samples a step: they are drawn faintly, with trailing means over
    ``max(1, steps // 5)`` steps (KL averaged before the square root) joined in step order."""
    methods = [m for m in ("best_of_n", "rl") if any(p["method"] == m for p in points)]
    plt, fig = _figure(5.2 * max(1, len(methods)), 3.8)
    for i, m in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        pts = sorted((p for p in points if p["method"] == m), key=lambda p: p["x"])
        if m == "best_of_n":
            xs = [p["sqrt_kl"] for p in pts]
            gold, proxy, labels = [p["gold"] for p in pts], [p["proxy"] for p in pts], [f"n={p['x']}" for p in pts]
            title = "best-of-n against the proxy"
        else:
            w = max(1, len(pts) // 5)
            ax.scatter([p["sqrt_kl"] for p in pts], [p["gold"] for p in pts], s=8, color="#c44", alpha=0.25)
            ax.scatter([p["sqrt_kl"] for p in pts], [p["proxy"] for p in pts], s=8, color="#48c", alpha=0.25)
            xs = [max(k, 0.0) ** 0.5 for k in _moving_average([p["kl"] for p in pts], w)]
            gold, proxy = _moving_average([p["gold"] for p in pts], w), _moving_average([p["proxy"] for p in pts], w)
            labels = [str(p["x"]) for p in pts]
            title = f"RL against the proxy (mean of {w} steps; labels: step)" if w > 1 else "RL against the proxy (labels: step)"
        ax.plot(xs, gold, "o-", color="#c44", label="gold", ms=4)
        ax.plot(xs, proxy, "s--", color="#48c", label="proxy", ms=4)
        every = max(1, len(pts) // 8)  # label at most ~8 points
        for j in range(len(pts)):
            if j % every == 0 or j == len(pts) - 1:
                ax.annotate(labels[j], (xs[j], proxy[j]), textcoords="offset points", xytext=(3, 4), fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("sqrt KL(π ‖ π_init)  (nats^½)")
        ax.set_ylabel("mean reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_interval_bars(groups: Sequence[str], series: dict[str, Sequence[dict | None]], *, ylabel: str, ylim=(0, 1)) -> bytes:
    """Grouped vertical bars with 95 % intervals: ``series[name][i]`` is ``{"value", "ci_low", "ci_high"}`` (or None)
    for ``groups[i]``."""
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    width = 0.8 / max(1, len(series))
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ys = [v["value"] if v else float("nan") for v in vals]
        err = [[v["value"] - v["ci_low"] if v else 0 for v in vals], [v["ci_high"] - v["value"] if v else 0 for v in vals]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_ratings(rows: Sequence[dict], *, title: str = "") -> bytes:
    """Ratings with intervals, best at the top: ``rows`` of ``{"model", "rating", "ci_low", "ci_high"}``."""
    rows = sorted(rows, key=lambda r: r["rating"], reverse=True)
    plt, fig = _figure(6.4, max(2.4, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot(111)
    ys = range(len(rows))
    ax.errorbar([r["rating"] for r in rows], list(ys), xerr=[[r["rating"] - r["ci_low"] for r in rows], [r["ci_high"] - r["rating"] for r in rows]],
                fmt="o", capsize=4)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([str(r["model"]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Bradley–Terry rating, Elo scale (95% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return _png(plt, fig)
