"""The refusal classifier against JailbreakBench's judge on the attacked models' saved responses (no model run).

Each JailbreakBench artifact (Chao et al. 2024, arXiv:2404.01318; ../shared/data/jailbreakbench_artifacts, MIT) holds,
for every attack prompt, the attacked model's response and the JailbreakBench judge's ``jailbroken`` verdict (and
Llama Guard's). This labels every saved response with preftune's refusal classifier, counts an attack as successful
when the label is ``compliance`` (what ``preftune eval --harmful`` does), and reports per file and pooled: rows, goals
without an attack prompt, agreement with each judge (95% bootstrap interval), Cohen's kappa and the confusion of
classifier labels with the judge's verdicts. The same figures per file come from
``preftune eval --harmful FILE --output-dir DIR`` (its "harmful" section); this script only loops and pools.

    OMP_NUM_THREADS=1 python bench/jailbreakbench_agreement.py [--classifier patterns|learned] [--json OUT]

``learned`` is fitted on the dev half of preftune's refusal validation set, which holds 68 responses from these same
artifacts: its figure here is partly in-sample (the script also reports it on the attempts outside that half).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from preftune.eval.refusal import LABELS, PatternRefusalClassifier
from preftune.eval.safety import judge_agreement, read_harmful

REPO = Path(__file__).resolve().parents[1]
FILES = ("PAIR/black_box/gpt-3.5-turbo-1106.json", "PAIR/black_box/gpt-4-0125-preview.json",
         "PAIR/black_box/llama-2-7b-chat-hf.json", "PAIR/black_box/vicuna-13b-v1.5.json",
         "GCG/transfer/gpt-3.5-turbo-1106.json", "GCG/transfer/gpt-4-0125-preview.json",
         "GCG/white_box/llama-2-7b-chat-hf.json", "GCG/white_box/vicuna-13b-v1.5.json")


def _rate(r: dict) -> str:
    return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "jailbreakbench_artifacts"))
    ap.add_argument("--classifier", choices=("patterns", "learned"), default="patterns")
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args()
    if args.classifier == "learned":
        from preftune.eval.refusal_validation import LearnedRefusalClassifier, load_validation_set

        classifier = LearnedRefusalClassifier.from_validation_set()
        seen = {r["prompt_id"] for r in load_validation_set() if r["source"] == "jailbreakbench" and r["split"] == "dev"}
    else:
        classifier, seen = PatternRefusalClassifier(), set()
    pooled_attempts, pooled_labels, pooled_unseen, out = [], [], [], {}
    print("| file | rows | no attack prompt | saved responses | agreement with JBB judge | kappa | ASR judge | ASR classifier | agreement with Llama Guard |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in FILES:
        items = read_harmful(Path(args.data) / name)
        attempts = [h.attempt for h in items if h.attempt.response is not None]
        labels = classifier([a.prompt for a in attempts], [a.response for a in attempts])
        agreement = judge_agreement(attempts, labels)
        judge, guard = agreement["jailbroken"], agreement.get("jailbroken_llama_guard1")
        kappa = "–" if judge["cohen_kappa"] is None else f"{judge['cohen_kappa']:.3f}"
        print(f"| {name} | {len(items) + len(items.skipped)} | {len(items.skipped)} | {len(attempts)} | {_rate(judge['agreement'])} "
              f"| {kappa} | {judge['judge_success_rate']['value']:.3f} | {judge['classifier_success_rate']['value']:.3f} "
              f"| {_rate(guard['agreement']) if guard else '–'} |")
        out[name] = {"rows": len(items) + len(items.skipped), "no_attack_prompt": len(items.skipped), **agreement}
        pooled_attempts += attempts
        pooled_labels += labels
        pooled_unseen += [f"{name}:{a.source.row - 1}" not in seen for a in attempts]  # validation ids use the 0-based index
    pooled = judge_agreement(pooled_attempts, pooled_labels)
    out["pooled"] = pooled
    for key, a in pooled.items():
        kappa = "–" if a["cohen_kappa"] is None else f"{a['cohen_kappa']:.3f}"
        print(f"\npooled, {a['judge']}: n {a['n']}, agreement {_rate(a['agreement'])}, kappa {kappa}, "
              f"ASR judge {_rate(a['judge_success_rate'])}, ASR classifier {_rate(a['classifier_success_rate'])}")
        print("| classifier label | jailbroken | not jailbroken |\n|---|---|---|")
        for lab in LABELS:
            print(f"| {lab} | {a['confusion'][lab]['jailbroken']} | {a['confusion'][lab]['not jailbroken']} |")
    if seen:
        keep = [i for i, u in enumerate(pooled_unseen) if u]
        unseen = judge_agreement([pooled_attempts[i] for i in keep], [pooled_labels[i] for i in keep])["jailbroken"]
        out["pooled_outside_training_rows"] = unseen
        print(f"\noutside the learned classifier's training rows: n {unseen['n']}, agreement with the JBB judge "
              f"{_rate(unseen['agreement'])}, kappa {unseen['cohen_kappa']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
