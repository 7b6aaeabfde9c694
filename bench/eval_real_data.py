"""Real-data checks of `preftune eval` on the default model (issue 5), bounded so they finish on a 2-core CPU.

    python bench/eval_real_data.py alpaca --out runs/eval-alpaca [--limit 48] [--max-new-tokens 128] [--reward SPEC]
                                          [--runs RUN ...] [--frontier FRONTIER.json]
    python bench/eval_real_data.py xstest --out runs/eval-xstest [--per-type N] [--max-new-tokens 64]
    python bench/eval_real_data.py frontier --out runs/frontier --checkpoints CKPT ... --reward SPEC [--limit 24]

* ``alpaca``: the default model against text-davinci-003's reference outputs on the first ``--limit`` AlpacaEval
  instructions (greedy), judged by the local LLM judge (the default model, both orders) and, with ``--reward``, a
  reward; text metrics against the reference outputs; plus bounded safety / bias suites (HarmBench val, XSTest
  stratified, TruthfulQA, BBQ) and the pluralistic-alignment questions (``--pluralistic``), so that every section
  of the report is filled.
* ``xstest``: over-refusal on XSTest per prompt type (all 450 prompts unless ``--per-type``).
* ``frontier``: `preftune frontier` for the given checkpoints against the default model.

Every command runs under ``flock /tmp/preftune_heavy.lock`` (the team's rule for jobs that load the default model) and
writes ``report.html`` / ``report.json`` in ``--out``; a summary of the figures is printed as JSON and written to
``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LOCK = "/tmp/preftune_heavy.lock"


def _run(args: list[str]) -> float:
    cmd = ["flock", LOCK, sys.executable, "-m", "preftune.cli", *args]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return time.time() - start


def _need(path: Path) -> str:
    if not path.exists():
        sys.exit(f"{path} is absent (the real data lives in ../shared beside the checkout)")
    return str(path)


def _fmt(rate: dict | None) -> str | None:
    return None if not rate else f"{rate['value']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]"


def summarise(report_json: Path) -> dict:
    data = json.loads(report_json.read_text())
    s = data["sections"]
    out: dict = {"report": str(report_json.with_suffix(".html")), "not_run": data["not_run"]}
    if s.get("win_rates"):
        out["judges"] = {j["judge"]: {"win_rate": _fmt(j["win_rate"]), "lc_win_rate": _fmt(j["lc_win_rate"]),
                                      "win": _fmt(j["win"]), "tie": _fmt(j["tie"]), "loss": _fmt(j["loss"]),
                                      **{k: v for k, v in j["details"].items()}} for j in s["win_rates"]["data"]["judges"]}
    if s.get("lengths"):
        d = s["lengths"]["data"]
        out["mean_length_tokens"] = {"model": sum(d["model"]) / len(d["model"]), "baseline": sum(d["baseline"]) / len(d["baseline"])}
    if s.get("text_metrics"):
        out["text_metrics"] = s["text_metrics"]["data"]
    if s.get("harmful"):
        out["harmful_refusal"] = {k: _fmt(s["harmful"]["data"]["overall"][k]) for k in ("refusal", "partial", "any_refusal")}
    if s.get("over_refusal"):
        d = s["over_refusal"]["data"]
        out["xstest"] = {"subset": d.get("subset"), "safe": {k: _fmt(d["safe"].get(k)) for k in ("refusal", "partial", "any_refusal")},
                         "unsafe": {k: _fmt(d["unsafe"].get(k)) for k in ("refusal", "partial", "any_refusal")},
                         "per_type_any_refusal": {t: round(v["any_refusal"]["value"], 3) for t, v in d["per_type"].items()}}
    if s.get("truthfulqa"):
        d = s["truthfulqa"]["data"]
        out["truthfulqa"] = {"n": d["n"], "mc1": round(d["mc1"]["mean"], 3), "mc2": round(d["mc2"]["mean"], 3)}
    if s.get("bbq"):
        d = s["bbq"]["data"]
        out["bbq"] = {k: d[k] for k in ("n", "accuracy_ambig", "accuracy_disambig", "bias_ambig", "bias_disambig")}
    if s.get("frontier"):
        out["frontier"] = s["frontier"]["data"]["points"]
    if s.get("pluralistic"):
        d = s["pluralistic"]["data"]
        out["pluralistic"] = {"n": d["n"], "js_distance": d["js_distance"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=["alpaca", "xstest", "frontier"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", help="write the summary here too")
    ap.add_argument("--limit", type=int, default=48, help="AlpacaEval instructions / frontier prompts")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--suite-limit", type=int, default=40, help="items per suite in the alpaca check")
    ap.add_argument("--per-type", type=int, default=None, help="XSTest prompts per type (default: all)")
    ap.add_argument("--reward", help="a reward spec for a reward judge (alpaca) or the frontier's reward")
    ap.add_argument("--runs", nargs="*", default=[], help="run folders for the training curves")
    ap.add_argument("--frontier", help="a frontier.json to include")
    ap.add_argument("--pluralistic", default=str(REPO / "preftune" / "eval" / "opinion_surveys.jsonl"),
                    help="opinion questions with human answer distributions (default: the published survey toplines "
                         "shipped with preftune, see preftune/eval/opinion_surveys.md)")
    ap.add_argument("--checkpoints", nargs="*", default=[])
    args = ap.parse_args()
    out = Path(args.out)

    if args.check == "alpaca":
        judges = ["llm"] + ([f"reward:{args.reward}"] if args.reward else [])
        cmd = ["eval", "--model", "smollm2-135m-instruct",
               "--baseline-generations", _need(DATA / "alpaca_eval" / "text_davinci_003_outputs.json"),
               "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens or 128), "--batch-size", str(args.batch_size),
               "--judges", json.dumps(judges), "--perplexity", "--output-dir", str(out),
               "--harmful", _need(DATA / "harmbench" / "harmbench_behaviors_text_val.csv"),
               "--xstest", _need(DATA / "xstest" / "xstest_prompts.csv"), "--xstest-per-type", "2",
               "--truthfulqa", _need(DATA / "truthfulqa" / "TruthfulQA.csv"),
               "--bbq", json.dumps([_need(DATA / "bbq" / "Religion.jsonl"), _need(DATA / "bbq" / "Sexual_orientation.jsonl")]),
               "--suite-limit", str(args.suite_limit)]
        if args.runs:
            cmd += ["--runs", json.dumps(args.runs)]
        if args.frontier:
            cmd += ["--frontier", args.frontier]
        if args.pluralistic:
            cmd += ["--pluralistic", _need(Path(args.pluralistic))]
    elif args.check == "xstest":
        cmd = ["eval", "--model", "smollm2-135m-instruct", "--xstest", _need(DATA / "xstest" / "xstest_prompts.csv"),
               "--max-new-tokens", str(args.max_new_tokens or 64), "--batch-size", str(args.batch_size), "--output-dir", str(out)]
        if args.per_type:
            cmd += ["--xstest-per-type", str(args.per_type)]
    else:
        if not args.checkpoints or not args.reward:
            sys.exit("frontier needs --checkpoints and --reward")
        cmd = ["frontier", "--checkpoints", json.dumps(args.checkpoints), "--reward", args.reward,
               "--prompts", _need(DATA / "alpaca_eval" / "text_davinci_003_outputs.json"), "--limit", str(args.limit),
               "--max-new-tokens", str(args.max_new_tokens or 48), "--output-dir", str(out), "--batch-size", str(args.batch_size)]
    seconds = _run(cmd)
    summary = summarise(out / "report.json")
    summary["seconds"] = round(seconds, 1)
    summary["command"] = "python bench/eval_real_data.py " + " ".join(sys.argv[1:])
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
