"""``preftune data inspect PATH``: counts, skipped rows with reasons, token-length statistics, one example."""

from __future__ import annotations

import json
import statistics
from typing import Literal

from pydantic import Field

from preftune.config import BaseConfig, Command
from preftune.data.convert import FORMATS, detect_file_format, load_examples
from preftune.data.options import ReadOptions, with_read_options
from preftune.data.formats import PreferencePair, Ranking, RuleExample, SFTExample, UnpairedExample
from preftune.data.tokenize import encode_completion, encode_prompt
from preftune.progress import progress

# The kind of examples inspected for each format (what the data is for).
_KIND_OF_FORMAT = {"sft": "sft", "preference": "preference", "hh": "preference", "ranking": "preference",
                   "correction": "preference", "unpaired": "unpaired", "rule": "rule", "oasst": "preference",
                   "ratings": "preference", "scored": "preference", "jailbreak": "rule", "self_instruct": "sft", "redteam": "rule"}


@with_read_options
class InspectConfig(BaseConfig):
    path: str = Field(description="a data file (.jsonl[.gz], .json, .csv, .parquet), a saved datasets folder, a hub id, or starter[:train|:test]")
    format: Literal[FORMATS] = Field("auto", description="data format; auto detects it from the first row")
    tokenizer: str = Field("smollm2-135m-instruct", description="tokenizer for the length statistics")
    json: bool = Field(False, description="print one JSON object instead of text")
    strict: bool = Field(False, description="stop at the first bad row instead of counting it as skipped")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")


def length_stats(lengths: list[int]) -> dict:
    """min / mean / median / p95 / max of token counts (p95 by the nearest-rank method)."""
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return {"count": len(ordered), "min": ordered[0], "mean": round(statistics.fmean(ordered), 2),
            "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def _fields(example) -> dict[str, list]:
    """The prompt and the completions of an example, for length statistics."""
    if isinstance(example, PreferencePair):
        return {"prompt": [example.prompt], "chosen": [example.chosen], "rejected": [example.rejected]}
    if isinstance(example, (SFTExample, UnpairedExample)):
        return {"prompt": [example.prompt], "completion": [example.completion]}
    if isinstance(example, RuleExample):
        return {"prompt": [example.prompt], "response": [example.response]}
    if isinstance(example, Ranking):
        return {"prompt": [example.prompt], "responses": list(example.responses)}
    raise TypeError(type(example))


def inspect_data(config: InspectConfig) -> dict:
    from preftune.models.loading import load_tokenizer

    options = ReadOptions.of(config)
    fmt = detect_file_format(config.path, config.format)
    kind = _KIND_OF_FORMAT[fmt]
    result = load_examples(config.path, fmt, kind=kind, skip_bad_rows=not config.strict, limit=config.limit, options=options)
    tokenizer = load_tokenizer(config.tokenizer)
    lengths: dict[str, list[int]] = {}
    totals: list[int] = []
    for example in progress(result.examples, desc="tokenising"):
        fields = _fields(example)
        prompt_len = len(encode_prompt(tokenizer, fields.pop("prompt")[0]))
        lengths.setdefault("prompt", []).append(prompt_len)
        for name, texts in fields.items():
            for text in texts:
                n = len(encode_completion(tokenizer, text))
                lengths.setdefault(name, []).append(n)
                totals.append(prompt_len + n)
    example = result.examples[0] if result.examples else None
    counts = {"rows": result.rows, "examples": len(result.examples), "skipped": len(result.skipped)}
    if kind == "preference":
        if fmt in ("oasst", "ranking", "ratings"):  # several pairs a prompt
            counts["prompts"] = len({json.dumps(e.prompt, sort_keys=True) for e in result.examples})
        counts["pairs"] = len(result.examples)
        if fmt in ("oasst", "ranking"):  # the rankings the pairs come from
            counts["rankings"] = len(load_examples(config.path, fmt, kind="ranking", skip_bad_rows=not config.strict,
                                                   limit=config.limit, options=options).examples)
    if kind == "rule":  # how the labels split (a red-team threshold or a jailbreak judge decides them)
        counts["followed"] = sum(e.followed for e in result.examples)
        counts["broken"] = len(result.examples) - counts["followed"]
    return {
        "path": str(config.path),
        "format": fmt,
        "kind": kind,
        "counts": counts,
        "skipped_rows": [{"row": s.row, "reason": reason} for s, reason in result.skipped],
        "skip_summary": result.skip_summary(),
        "token_lengths": {**{k: length_stats(v) for k, v in lengths.items()}, "prompt+completion": length_stats(totals)},
        "tokenizer": config.tokenizer,
        "example": _example_dict(example),
    }


def _example_dict(example) -> dict | None:
    if example is None:
        return None
    from dataclasses import asdict

    d = asdict(example)
    d.pop("source", None)
    d["source_row"] = example.source.row if example.source else None
    return d


def _print_text(report: dict) -> None:
    c = report["counts"]
    print(f"{report['path']}  (format: {report['format']}, examples: {report['kind']})")
    line = f"rows: {c['rows']}   examples: {c['examples']}"
    for name in ("prompts", "rankings", "pairs", "followed", "broken"):
        if name in c:
            line += f"   {name}: {c[name]}"
    print(line + f"   skipped: {c['skipped']}")
    if report["skipped_rows"]:
        print(report["skip_summary"])
        for s in report["skipped_rows"][:10]:
            print(f"  row {s['row']}: {s['reason']}")
        if len(report["skipped_rows"]) > 10:
            print(f"  … and {len(report['skipped_rows']) - 10} more")
    print(f"\ntoken lengths ({report['tokenizer']}):")
    print(f"  {'field':<20}{'min':>7}{'mean':>10}{'median':>9}{'p95':>7}{'max':>7}")
    for name, s in report["token_lengths"].items():
        if s.get("count"):
            print(f"  {name:<20}{s['min']:>7}{s['mean']:>10}{s['median']:>9}{s['p95']:>7}{s['max']:>7}")
    print("\nexample:")
    print(json.dumps(report["example"], indent=2, ensure_ascii=False)[:2000])


def run(config: InspectConfig) -> int:
    report = inspect_data(config)
    if config.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_text(report)
    return 0


COMMAND = Command("data inspect", "Count rows, pairs and token lengths of a data file, with one example", InspectConfig, run,
                  positional=("path",))
