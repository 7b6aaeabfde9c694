"""Reading rows from files: JSONL (optionally gzipped), JSON, CSV, Parquet, a saved ``datasets`` folder, a hub id, or
a ``preftune annotate`` feedback database (``.sqlite``: its preference pairs, see :mod:`preftune.data.feedback_db`).

Every reader yields ``(row_number, dict)`` with 1-based row numbers as a person counts them (the line of a
JSONL file, the data row of a CSV not counting its header), so errors can name the row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from preftune.errors import DataError

READABLE = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz", ".csv.gz")
STARTER_FILE = Path(__file__).parent / "starter" / "pairs.jsonl"
STARTER_SPLITS = ("train", "test")
STARTER_CATEGORIES = ("helpful", "harmless", "benign_risky", "honest")


def is_starter(target: str) -> bool:
    """``starter``, ``starter:SPLIT`` and ``starter:SPLIT:CATEGORY`` name the built-in dataset (unless such a path exists)."""
    return (target == "starter" or target.startswith("starter:")) and not Path(target).exists()


def _read_starter(target: str) -> Iterator[tuple[int, dict]]:
    """Rows of the starter dataset: ``starter:test``, ``starter:test:harmless``, ``starter::benign_risky`` (both splits).

    Its prompts are plain strings, presented like every plain prompt (:mod:`preftune.models.prompt_format`)."""
    from preftune.errors import PreftuneError

    _, split, category = (target.split(":") + ["", ""])[:3]
    if split and split not in STARTER_SPLITS:
        raise PreftuneError(f"the starter dataset has splits {', '.join(STARTER_SPLITS)}, not '{split}'")
    if category and category not in STARTER_CATEGORIES:
        raise PreftuneError(f"the starter dataset has categories {', '.join(STARTER_CATEGORIES)}, not '{category}'")
    if not STARTER_FILE.exists():
        raise PreftuneError(f"the starter dataset is missing from this install ({STARTER_FILE})")
    for number, row in _read_jsonl(STARTER_FILE):
        if (not split or row.get("split") == split) and (not category or row.get("category") == category):
            yield number, row


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _kind(path: Path) -> str:
    name = path.name.lower()
    for ext in (".jsonl.gz", ".json.gz", ".csv.gz", ".jsonl", ".json", ".csv", ".parquet"):
        if name.endswith(ext):
            return ext.removesuffix(".gz").lstrip(".")
    return ""


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON: {err.msg} at column {err.colno}", file=str(path), row=number) from None
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {type(row).__name__}", file=str(path), row=number)
            yield number, row


def _read_json(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}", file=str(path)) from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: the single list inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("a JSON file must hold a list of objects (or an object with exactly one list)", file=str(path))
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"a JSON file must hold a list of objects, got {type(data).__name__}", file=str(path))
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", file=str(path), row=number)
        yield number, row


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        for number, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(f"has {len(reader.fieldnames or []) + len(row[None])} cells but the header has "
                                f"{len(reader.fieldnames or [])}", file=str(path), row=number)
            yield number, dict(row)


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def _read_datasets(target: str, split: str | None) -> Iterator[tuple[int, dict]]:
    import datasets

    path = Path(target)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    else:
        try:
            loaded = datasets.load_dataset(target)
        except Exception as err:  # offline, unknown id, ...: one clear message instead of a deep trace
            raise DataError(f"could not load the dataset '{target}' from the hub ({type(err).__name__}: {err})", file=target) from None
    if isinstance(loaded, datasets.DatasetDict):
        name = split or ("train" if "train" in loaded else next(iter(loaded)))
        if name not in loaded:
            raise DataError(f"has no split '{name}' (it has {', '.join(loaded)})", file=target)
        loaded = loaded[name]
    for number, row in enumerate(loaded, start=1):
        yield number, dict(row)


def read_rows(path: str | Path, split: str | None = None) -> Iterator[tuple[int, dict]]:
    """Rows of a data file, a saved ``datasets`` folder, a hub dataset id or the built-in ``starter[:train|:test]``,
    as ``(row_number, dict)``."""
    target = str(path)
    if is_starter(target):
        yield from _read_starter(target)
        return
    p = Path(target).expanduser()
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            yield from _read_datasets(str(p), split)
            return
        files = sorted(f for f in p.iterdir() if _kind(f))
        if not files:
            raise DataError("is a folder with no data files (.jsonl, .json, .csv, .parquet) and no saved dataset", file=str(p))
        for f in files:  # a folder of shards: rows numbered per file, errors name the shard
            yield from read_rows(f)
        return
    if p.is_file() and p.name.lower().endswith((".sqlite", ".sqlite3", ".db")):  # a `preftune annotate` database
        from preftune.data.feedback_db import read_feedback_db

        yield from read_feedback_db(p)
        return
    if p.exists():
        kind = _kind(p)
        reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}.get(kind)
        if reader is None:
            raise DataError(f"unknown file type (readable: {', '.join(READABLE)}, a saved datasets folder, or a hub id)", file=str(p))
        try:
            yield from reader(p)
        except (OSError, UnicodeDecodeError, EOFError) as err:
            raise DataError(f"cannot read the file ({type(err).__name__}: {err})", file=str(p)) from None
        except DataError:
            raise
        except Exception as err:  # e.g. a corrupt parquet file
            raise DataError(f"cannot read the file ({type(err).__name__}: {err})", file=str(p)) from None
        return
    if target.startswith((".", "/", "~")) or _kind(p) or target.count("/") != 1:
        raise DataError("no such file or folder", file=target)
    yield from _read_datasets(target, split)


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write dicts as JSON lines (UTF-8, non-ASCII kept), creating the parent folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
