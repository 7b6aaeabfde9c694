"""``preftune data safety-pairs``: refusal contrast pairs (:mod:`preftune.data.safety`) from harmful prompts with a
compliant answer and from benign demonstrations; writes ``harmful.jsonl``, ``benign.jsonl`` and ``safety.json``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from preftune.config import BaseConfig, Command
from preftune.data.convert import load_examples
from preftune.data.formats import Source
from preftune.data.readers import write_jsonl
from preftune.data.safety import HarmfulPrompt, load_refusals, safety_pairs
from preftune.errors import DataError, PreftuneError

#: where a harmful row's compliant answer is looked for, in order (AdvBench calls it ``target``)
COMPLIANCE_FIELDS = ("response", "target", "completion", "output")


class SafetyPairsConfig(BaseConfig):
    harmful: list[str] = Field(default_factory=list, description="files of harmful prompts, each with a compliant answer (AdvBench's goal / target, or `preftune generate` output)")
    benign: list[str] = Field(default_factory=list, description="demonstrations of benign requests answered (any format that gives SFT examples)")
    prompt_field: str | None = Field(None, description="the harmful files' prompt field (default: detected)")
    compliance_field: str | None = Field(None, description=f"the harmful files' compliant-answer field (default: the first of {', '.join(COMPLIANCE_FIELDS)})")
    refusals: str | None = Field(None, description="YAML file with a `refusals:` list (default: the project's own list)")
    exclude: list[str] = Field(default_factory=list, description="prompt files never to train on (the evaluation suites): near duplicates of their prompts are left out")
    exclude_similarity: float = Field(0.5, gt=0, le=1, description="word Jaccard similarity from which a prompt counts as a near duplicate of an excluded one")
    skip_bad_rows: bool = Field(False, description="skip (and count) bad rows instead of stopping at the first")
    output_dir: str = Field("runs/safety", description="folder for harmful.jsonl, benign.jsonl and safety.json")


def read_harmful(path: str, prompt_field: str | None, compliance_field: str | None) -> list[HarmfulPrompt]:
    """Harmful prompts with their compliant answers; a row without one is an error naming file, row and field."""
    from preftune.eval.data import load_prompt_set

    answer_field = compliance_field
    if answer_field is None:
        from preftune.data.readers import read_rows

        first = next((row for _, row in read_rows(path)), None)
        if first is None:
            raise DataError("has no rows", file=path)
        answer_field = next((f for f in COMPLIANCE_FIELDS if f in first), None)
        if answer_field is None:
            raise DataError(f"no compliant-answer field (expected one of {', '.join(COMPLIANCE_FIELDS)}, or "
                            f"--compliance-field); `preftune generate --prompts {path}` writes one", file=path, row=1)
    out = []
    for item in load_prompt_set(path, field=prompt_field, reference_field=answer_field):
        if item.reference is None or not item.reference.strip():
            raise DataError("is missing or empty: a harmful prompt needs a compliant answer to reject", file=path,
                            row=item.row, field=answer_field)
        out.append(HarmfulPrompt(item.prompt, item.reference.strip(), Source(path, item.row)))
    return out


def build(config: SafetyPairsConfig) -> dict:
    """Write the pairs; returns the summary written to safety.json."""
    from preftune.eval.refusal import classify_refusal

    if not config.harmful and not config.benign:
        raise PreftuneError("give --harmful files, --benign files, or both")
    refusals = load_refusals(config.refusals)
    harmful = [h for path in config.harmful for h in read_harmful(path, config.prompt_field, config.compliance_field)]
    benign, bad_rows = [], []
    for path in config.benign:
        result = load_examples(path, "auto", kind="sft", skip_bad_rows=config.skip_bad_rows)
        benign += result.examples
        bad_rows += [(s, reason) for s, reason in result.skipped]
    # a partial refusal still helps with the request, so only a full refusal disqualifies an answer
    from preftune.eval.data import load_prompt_set
    from preftune.data.formats import prompt_text

    exclude = [prompt_text(item.prompt) for path in config.exclude for item in load_prompt_set(path)]
    pairs = safety_pairs(harmful, benign, refusals, lambda text: classify_refusal(text).label == "refusal",
                         exclude=exclude, exclude_similarity=config.exclude_similarity)
    out = Path(config.output_dir)
    write_jsonl(({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs.harmful), out / "harmful.jsonl")
    write_jsonl(({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs.benign), out / "benign.jsonl")
    skipped = [{"file": s.file, "row": s.row, "reason": reason} for s, reason in bad_rows + pairs.skipped]
    summary = {"harmful_pairs": len(pairs.harmful), "benign_pairs": len(pairs.benign), "refusals": len(refusals),
               "refusal_list": config.refusals or "preftune/data/starter/refusals.yaml", "skipped": skipped,
               "harmful": config.harmful, "benign": config.benign, "exclude": config.exclude,
               "exclude_similarity": config.exclude_similarity}
    (out / "safety.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def run(config: SafetyPairsConfig) -> int:
    summary = build(config)
    print(f"{summary['harmful_pairs']} harmful pairs (refusal ≻ compliance), {summary['benign_pairs']} benign pairs "
          f"(answer ≻ refusal), {len(summary['skipped'])} rows skipped (reasons in safety.json); wrote {config.output_dir}")
    return 0


COMMAND = Command("data safety-pairs", "Refusal contrast pairs: refuse harmful prompts, answer benign ones", SafetyPairsConfig, run,
                  description=__doc__.split("\n\n")[0])
