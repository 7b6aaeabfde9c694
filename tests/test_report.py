"""The HTML + JSON report: every section present, plots embedded as base64 PNG, nothing fetched from outside."""

from __future__ import annotations

import base64
import json
import re

import pytest

from preftune.eval import report as rp


def _rate(v):
    return {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}


def full_report() -> rp.Report:
    r = rp.Report("test report")
    r.add("summary", tables=[("settings", [{"setting": "model", "value": "tiny"}])])
    rows = [{"judge": "reward", "win_rate": _rate(0.6), "lc_win_rate": _rate(0.55), "win": _rate(0.5), "tie": _rate(0.2), "loss": _rate(0.3)}]
    r.add("win_rates", tables=[("win rates", [{"judge": "reward", "win rate": 0.6}])], images=[("wins", rp.plot_win_rates(rows))])
    r.add("lengths", images=[("hist", rp.plot_length_histogram([1, 2, 3, 9], [2, 2, 5]))])
    r.add("text_metrics", tables=[("m", [{"metric": "bleu", "value": 12.5}])])
    pts = [{"name": "sft", "kl": 0.0, "kl_ci": [0.0, 0.0], "mean_reward": 0.1, "reward_ci": [0.0, 0.2]},
           {"name": "dpo", "kl": 2.0, "kl_ci": [1.5, 2.5], "mean_reward": 0.6, "reward_ci": [0.5, 0.7]}]
    r.add("frontier", images=[("frontier", rp.plot_frontier(pts))], data={"points": pts})
    runs = {"run1": [{"step": 1, "loss": 1.0, "acc": 0.5}, {"step": 2, "loss": 0.8, "acc": 0.6}],
            "run2": [{"step": 1, "loss": 1.2}, {"step": 2, "loss": 0.7}]}
    r.add("training_curves", images=[("curves", rp.plot_training_curves(runs))])
    r.add("harmful", tables=[("rates", [{"category": "all", "refusal": "0.5"}])])
    groups = [{"group": "homonyms", "label": "safe", "any_refusal": _rate(0.2)}, {"group": "contrast", "label": "unsafe", "any_refusal": _rate(0.8)}]
    r.add("over_refusal", images=[("types", rp.plot_rates_by_group(groups, group_key="group"))])
    r.add("truthfulqa", tables=[("tqa", [{"metric": "mc1", "value": 0.25}])])
    r.add("bbq", tables=[("bbq", [{"accuracy_ambig": 0.4, "bias_ambig": None}])])
    r.add("pluralistic", tables=[("js", [{"mean": 0.3}])])
    r.add("red_teaming", tables=[("stages", [{"stage": "zero_shot", "failures": 3}])])
    oo_points = [{"method": m, "x": n, "kl": n - 1.0, "sqrt_kl": (n - 1) ** 0.5, "gold": 0.1 * n, "proxy": 0.2 * n}
                 for m in ("best_of_n", "rl") for n in (1, 2, 4)]
    r.add("overoptimization", images=[("gold and proxy", rp.plot_overoptimization(oo_points))])
    r.add("toxicity", images=[("toxicity", rp.plot_interval_bars(["all", "toxic"], {"emt": [_rate(0.4), _rate(0.6)], "prob": [_rate(0.3), None]},
                                                                 ylabel="score"))])
    r.add("leaderboard", images=[("ratings", rp.plot_ratings([{"model": "a", "rating": 1050.0, "ci_low": 1000.0, "ci_high": 1100.0},
                                                              {"model": "b", "rating": 950.0, "ci_low": 900.0, "ci_high": 1000.0}]))])
    r.add("judge_agreement", tables=[("agreement", [{"rater": "llm", "leave-one-out agreement": 0.6}])])
    r.add("examples", tables=[("ex", [{"prompt": "<b>hi</b> & bye", "model": "x" * 100}])])
    return r


def test_html_has_every_section_and_embedded_images(tmp_path):
    html_path, json_path = full_report().write(tmp_path)
    html = html_path.read_text()
    for key, title, _ in rp.SECTIONS:
        assert f"<section id='{key}'>" in html
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == 8  # wins, length histogram, frontier, curves, per-type rates, over-optimisation, toxicity, ratings
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    # self-contained: no external resources, no scripts
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    assert "Not run" not in html
    assert "&lt;b&gt;hi&lt;/b&gt; &amp; bye" in html  # text is escaped
    data = json.loads(json_path.read_text())
    assert data["not_run"] == []
    assert set(data["sections"]) == set(rp.SECTION_KEYS)
    assert data["sections"]["frontier"]["data"]["points"][1]["kl"] == 2.0
    assert data["sections"]["lengths"]["images"] == ["hist"]


def test_missing_sections_are_marked_not_run(tmp_path):
    r = rp.Report()
    r.add("summary", text="only a summary", data={"x": float("nan")})
    html_path, json_path = r.write(tmp_path)
    html = html_path.read_text()
    assert html.count("<section") == 2  # the summary and the closing list; no empty sections
    assert "<li>TruthfulQA multiple choice: give --truthfulqa FILE.csv</li>" in html
    assert html.count("<li>") == 1 + 1 + len(rp.SECTIONS) - 1  # nav: summary and "Not run"; one item per missing section
    data = json.loads(json_path.read_text())
    assert data["sections"]["summary"]["data"] == {"x": None}  # NaN becomes null: valid JSON
    assert data["sections"]["bbq"] is None and "bbq" in data["not_run"]
    with pytest.raises(KeyError, match="unknown report section 'nope'"):
        r.add("nope")


def test_hide_not_run_shows_only_filled_sections():
    r = rp.Report("one section", hide_not_run=True)
    r.add("red_teaming", text="found 3")
    html = r.to_html()
    assert "<section id='red_teaming'>" in html and "found 3" in html
    assert "Not run" not in html and "(not run)" not in html and "<section id='win_rates'>" not in html
    assert rp.Report("all").to_html().count("<li>") == 1 + len(rp.SECTIONS)  # nav "Not run" + one item per section
    assert r.to_json()["not_run"] == [k for k in rp.SECTION_KEYS if k != "red_teaming"]  # the JSON still lists them


def test_moving_average():
    assert rp._moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert rp._moving_average([1.0, 3.0], 1) == [1.0, 3.0]
