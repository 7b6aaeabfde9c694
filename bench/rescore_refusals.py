"""Re-score the saved responses of `preftune eval` reports with the current refusal classifier.

The hh-harmless-dpo figures of BENCHMARKS.md were first scored by the refusal patterns before the validation of issue
17 (which added, among others, curly apostrophes: "I’m not going to write that." was compliance before). Greedy
answers do not change, so re-scoring the saved responses gives what `preftune eval` reports with the current code.

    python bench/rescore_refusals.py runs/hh-harmless-dpo/eval_dpo/report.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preftune.eval.refusal import classify_refusal  # noqa: E402
from preftune.eval.safety import refusal_rates  # noqa: E402


def rescore(report: Path) -> dict:
    sections = json.loads(report.read_text())["sections"]
    out = {}
    for key in ("harmful", "over_refusal"):
        responses = sections.get(key, {}).get("data", {}).get("responses") if sections.get(key) else None
        if not responses:
            continue
        labels = [classify_refusal(r["response"], prompt=r.get("prompt")).label for r in responses]
        out[key] = {**refusal_rates(labels),
                    "changed_from_report": sum(a != r.get("label") for a, r in zip(labels, responses))}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+")
    args = parser.parse_args()
    print(json.dumps({path: rescore(Path(path)) for path in args.reports}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
