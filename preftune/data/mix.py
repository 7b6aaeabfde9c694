"""``preftune data mix``: several data sources into one training file and fixed held-out files.

Recipes train on mixes (Anthropic HH pairs plus the starter set; HH plus OpenAssistant rankings) and report
accuracy on a held-out part of each source. This command reads each source in its own format, converts it to the
internal examples, holds out a fixed fraction of each, and writes::

    OUTPUT_DIR/train.jsonl          every source's training part (a ``source`` field says where a row came from)
    OUTPUT_DIR/test.jsonl           every source's held-out part
    OUTPUT_DIR/test-NAME.jsonl      one source's held-out part (NAME: the source's file name, or starter-SPLIT)
    OUTPUT_DIR/mix.json             counts per source, skipped rows with reasons, the settings

The held-out part is chosen by a hash of each example's prompt and the seed, not by its position: the same
example lands on the same side whatever the order or number of rows read, so a held-out set stays fixed when a
recipe adds data, and every example of one prompt (a ranking's pairs, a pair's SFT view) lands on the same side. Rows are written in the internal forms' fields (prompt, chosen, rejected, margin / prompt,
completion / prompt, completion, label), which ``--format auto`` reads back unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from preftune.config import BaseConfig, Command
from preftune.data.convert import load_examples
from preftune.data.options import ReadOptions, with_read_options
from preftune.data.formats import PreferencePair, SFTExample, UnpairedExample
from preftune.errors import PreftuneError


@with_read_options
class MixConfig(BaseConfig):
    inputs: list[str] = Field(description="data sources (files, datasets folders, hub ids, starter[:SPLIT[:CATEGORY]])")
    kind: Literal["preference", "sft", "unpaired"] = Field("preference", description="what to write: pairs, demonstrations (a pair's chosen side) or KTO labels")
    limits: list[int | None] = Field(default_factory=list, description="at most this many training examples from each input (null: all), in the order of --inputs")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this fraction of every input")
    seed: int = Field(0, description="seed of the held-out choice and of the --limits sample")
    skip_bad_rows: bool = Field(False, description="skip (and count) bad rows instead of stopping at the first")
    output_dir: str = Field("runs/data", description="folder for train.jsonl, test.jsonl, test-NAME.jsonl and mix.json")


def source_name(source: str) -> str:
    """A short file-name-safe label for a source: ``pairs`` for ``.../pairs.jsonl.gz``, ``starter-test`` for ``starter:test``."""
    name = Path(source).name if not source.startswith("starter") else source.replace(":", "-").rstrip("-")
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".parquet"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "data"


def _row(example) -> dict:
    if isinstance(example, PreferencePair):
        row = {"prompt": example.prompt, "chosen": example.chosen, "rejected": example.rejected}
        if example.margin is not None:
            row["margin"] = example.margin
        return row
    if isinstance(example, UnpairedExample):
        return {"prompt": example.prompt, "completion": example.completion, "label": example.label}
    if isinstance(example, SFTExample):
        return {"prompt": example.prompt, "completion": example.completion}
    raise TypeError(type(example))


def held_out(row: dict, seed: int, fraction: float) -> bool:
    """Is this example in the held-out part? Decided by its prompt and the seed alone (stable under reordering)."""
    # keyed by the prompt alone: a pair and its SFT view (prompt, chosen), and every pair of one ranking, fall on the
    # same side, so no held-out prompt is trained on
    key = json.dumps(row["prompt"])
    digest = hashlib.sha256(f"{seed}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def mix(config: MixConfig) -> dict:
    """Write the mix; returns the summary written to mix.json."""
    import random

    if config.limits and len(config.limits) != len(config.inputs):
        raise PreftuneError(f"--limits has {len(config.limits)} entries for {len(config.inputs)} inputs (one each, null for all)")
    names = [source_name(s) for s in config.inputs]
    if len(set(names)) != len(names):
        raise PreftuneError(f"two inputs have the same name ({', '.join(names)}): rename one file")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows, per_source = [], [], []
    for i, (source, name) in enumerate(zip(config.inputs, names)):
        result = load_examples(source, "auto", kind=config.kind, skip_bad_rows=config.skip_bad_rows, options=ReadOptions.of(config))
        rows = [{**_row(ex), "source": name} for ex in result.examples]
        test = [r for r in rows if config.test_fraction and held_out(r, config.seed, config.test_fraction)]
        train = [r for r in rows if not (config.test_fraction and held_out(r, config.seed, config.test_fraction))]
        limit = config.limits[i] if config.limits else None
        if limit is not None and limit < len(train):
            train = random.Random(config.seed).sample(train, limit)
        train_rows += train
        test_rows += test
        if test:
            _write(out / f"test-{name}.jsonl", test)
        per_source.append({"source": source, "name": name, "format": result.format, "rows": result.rows,
                           "examples": len(rows), "train": len(train), "test": len(test),
                           "skipped": [{"row": s.row, "reason": reason} for s, reason in result.skipped]})
    random.Random(config.seed).shuffle(train_rows)
    _write(out / "train.jsonl", train_rows)
    if test_rows:
        _write(out / "test.jsonl", test_rows)
    summary = {"kind": config.kind, "test_fraction": config.test_fraction, "seed": config.seed,
               "train": len(train_rows), "test": len(test_rows), "sources": per_source}
    (out / "mix.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(config: MixConfig) -> int:
    summary = mix(config)
    for s in summary["sources"]:
        skipped = f", {len(s['skipped'])} rows skipped" if s["skipped"] else ""
        print(f"{s['source']} ({s['format']}): {s['train']} train, {s['test']} held out{skipped}")
    print(f"wrote {summary['train']} training and {summary['test']} held-out {config.kind} examples to {config.output_dir}")
    return 0


COMMAND = Command("data mix", "Mix data sources into one training file with a fixed held-out part of each", MixConfig, run,
                  description=__doc__.split("\n\n")[0])
