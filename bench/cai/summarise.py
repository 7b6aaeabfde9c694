"""Collect the CAI benchmark's figures and samples from bench/cai/work into bench/results/cai.json and
bench/results/cai_samples.md (sample critique -> revision chains, AI labels, and eval responses)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

W = Path(os.environ.get("CAI_WORK", "bench/cai/work"))
OUT = Path("bench/results")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    lines = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    flags = [f for f in lines.get("Flags", "").split() if f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2")]
    return f"{lines.get('Model name', '?')} ({', '.join(flags)})"


def suite(name: str) -> dict:
    path = W / f"eval_{name}" / "report.json"
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    return report


def main() -> None:
    summary: dict = {"cpu": cpu()}
    sl = rows(W / "sl.jsonl")
    summary["sl_cai"] = {"chains": len(sl),
                         "revision_equals_response": sum(r["completion"].strip() == r["initial_response"].strip() for r in sl),
                         "completion_from": {k: sum(r["completion_from"] == k for r in sl) for k in {r["completion_from"] for r in sl}}}
    if (W / "label_report.json").exists():
        summary["labels"] = json.loads((W / "label_report.json").read_text())
    for name in ("base", "sl", "rl"):
        rep = suite(name)
        if rep:
            summary[f"eval_{name}"] = rep
    if (W / "rm" / "eval.json").exists():
        summary["reward_model_on_human_heldout"] = json.loads((W / "rm" / "eval.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cai.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = ["# Constitutional AI with SmolLM2-135M-Instruct as its own critic: samples", ""]
    for r in sl[:8]:
        lines += [f"## {r['prompt']}", "", f"**response:** {r['initial_response']}", ""]
        for k, step in enumerate(r["chain"]):
            lines += [f"**critique {k + 1} ({step['principle']}):** {step['critique']}", "",
                      f"**revision {k + 1}:** {step['revision']}", ""]
    labels = rows(W / "ai_labels.jsonl")
    if labels:
        lines += ["# AI labels (HH harmless pairs relabelled)", ""]
        for r in labels[:6]:
            lines += [f"- prompt: {r['prompt']!r}; label {r['label']:.3f}; principles {r['principles']}; "
                      f"P(A) a-first {[round(x, 3) for x in r['p_option_a_first']]}, "
                      f"b-first {[round(x, 3) for x in r['p_option_a_swapped']]}; swapped vs human: {r['swapped']}"]
        lines.append("")
    (OUT / "cai_samples.md").write_text("\n".join(lines))
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("eval_")}, indent=2))


if __name__ == "__main__":
    main()
