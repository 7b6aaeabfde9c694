"""Safety suites: refusal rate on harmful requests, and over-refusal on prompts that only sound unsafe.

* Harmful requests: a HarmBench / AdvBench-style CSV, one behaviour per row. The prompt column is found among
  ``Behavior``, ``goal``, ``prompt``, ``instruction``, ``behaviour``, ``question`` (any case) unless named; HarmBench's
  contextual behaviours (a non-empty ``ContextString``) get their context prepended. A category column
  (``SemanticCategory``, ``category``, ``FunctionalCategory``) when present gives per-category rates.
  Higher refusal is better here.
* JailbreakBench attack artifacts (Chao et al. 2024, arXiv:2404.01318; a JSON file with ``parameters`` and
  ``jailbreaks``, read by the ``jailbreak`` format's reader, :func:`preftune.data.native.jailbreak_attempt`): the
  attack ``prompt`` is what the model is asked (the ``goal`` is kept as its intent), ``category`` gives per-category
  rates and works with ``where``. A goal whose attack submitted no prompt is not asked: it is counted in
  :attr:`HarmfulSet.skipped` with its reason. ``column="goal"`` asks the goals themselves (the direct requests,
  without the attack) through the generic reader. The artifact also holds the attacked model's ``response`` and
  the JailbreakBench judge's ``jailbroken`` label: :func:`judge_agreement` compares the refusal classifier's labels
  of those saved responses with the judge's, which needs no model.
* Over-refusal: an XSTest-style CSV (Röttger et al. 2024) with ``prompt``, ``type`` and ``label`` (``safe`` /
  ``unsafe``). Reported per type: refusal, partial and compliance rates. On safe types any refusal is over-refusal
  (lower is better); the unsafe contrast types show whether the model still refuses what it should.
  The starter dataset works as such a file too (``starter:test``): its ``harmless`` prompts are the unsafe type,
  every other category (``helpful``, ``benign_risky``, ``honest``) a safe one.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from preftune.data.fields import RowDropped
from preftune.data.formats import Source
from preftune.data.native import JailbreakAttempt, detect_native, jailbreak_artifact_parameters, jailbreak_attempt
from preftune.data.readers import is_starter, read_rows
from preftune.errors import DataError
from preftune.eval.stats import rate_with_ci

HARMFUL_COLUMNS = ("behavior", "behaviour", "goal", "prompt", "instruction", "question")
CATEGORY_COLUMNS = ("semanticcategory", "category", "functionalcategory")


@dataclass(frozen=True)
class SafetyPrompt:
    prompt: str
    category: str | None = None
    label: str | None = None  # safe / unsafe (XSTest)
    row: int = 0
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    attempt: JailbreakAttempt | None = field(default=None, hash=False, compare=False)  # a JailbreakBench row's attempt


@dataclass
class HarmfulSet(Sequence):
    """The harmful requests of a file (a sequence of :class:`SafetyPrompt`), the rows with nothing to ask, as
    ``(row, reason)``, and for a JailbreakBench artifact its ``parameters`` (method, attacked model, ...; None for a
    folder of artifacts)."""

    items: list[SafetyPrompt]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    format: str = "behaviours"  # or "jailbreak"
    parameters: dict | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self) -> Iterator[SafetyPrompt]:
        return iter(self.items)


def _find(columns: Sequence[str], wanted: Sequence[str]) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    for w in wanted:
        if w in lower:
            return lower[w]
    return None


def read_harmful(path: str | Path, *, column: str | None = None, limit: int | None = None,
                 where: str | None = None) -> HarmfulSet:
    """Harmful behaviours from a CSV / JSONL file or a JailbreakBench artifact (see module doc for the column rules);
    ``where="COLUMN=VALUE"`` keeps the rows whose COLUMN is VALUE (HarmBench's ``FunctionalCategory=standard``,
    JailbreakBench's ``category=Malware/Hacking``)."""
    rows = read_rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError("has no rows", file=str(path))
    rows = itertools.chain([first], rows)
    if column in (None, "prompt") and detect_native(first[1]) == "jailbreak":
        return _read_jailbreak_attempts(path, rows, limit=limit, where=where)
    out: list[SafetyPrompt] = []
    prompt_col = cat_col = None
    for row_number, row in rows:
        if not _matches(row, where, path, row_number):
            continue
        if prompt_col is None:
            prompt_col = column or _find(list(row), HARMFUL_COLUMNS)
            if prompt_col is None or prompt_col not in row:
                raise DataError(f"no prompt column: expected one of {', '.join(HARMFUL_COLUMNS)} (any case) or --harmful-column; "
                                f"the columns are {', '.join(row)}", file=str(path), row=row_number, field=column)
            cat_col = _find(list(row), CATEGORY_COLUMNS)
        text = str(row.get(prompt_col) or "").strip()
        if not text:
            raise DataError("empty prompt", file=str(path), row=row_number, field=prompt_col)
        context = str(row.get("ContextString") or "").strip()
        if context:
            text = f"{context}\n\n---\n\n{text}"
        out.append(SafetyPrompt(text, str(row[cat_col]) if cat_col and row.get(cat_col) else None, None, row_number))
        if limit is not None and len(out) >= limit:
            break
    return HarmfulSet(out)


def _read_jailbreak_attempts(path: str | Path, rows, *, limit: int | None, where: str | None) -> HarmfulSet:
    """JailbreakBench rows → the attack prompts to ask; a goal with no attack prompt is skipped with its reason."""
    out: list[SafetyPrompt] = []
    skipped: list[tuple[int, str]] = []
    for row_number, row in rows:
        if not _matches(row, where, path, row_number):
            continue
        try:
            attempt = jailbreak_attempt(row, Source(str(path), row_number))
        except RowDropped as dropped:
            skipped.append((row_number, dropped.reason))
            continue
        out.append(SafetyPrompt(attempt.prompt.strip(), attempt.category, None, row_number, attempt=attempt))
        if limit is not None and len(out) >= limit:
            break
    return HarmfulSet(out, skipped, "jailbreak", jailbreak_artifact_parameters(path))


def _matches(row: dict, where: str | None, path, row_number: int) -> bool:
    """Does the row pass ``where="COLUMN=VALUE"`` (always, without one)?"""
    if not where:
        return True
    column, _, value = where.partition("=")
    if column not in row:
        raise DataError(f"the filter {where!r} names the column '{column}', which is not one of {', '.join(row)}",
                        file=str(path), row=row_number, field=column)
    return str(row[column]).strip() == value


def read_xstest(path: str | Path, *, limit: int | None = None, per_type: int | None = None,
                where: str | None = None) -> list[SafetyPrompt]:
    """XSTest-style rows (``prompt``, ``type``, ``label`` in {safe, unsafe}). ``per_type`` keeps the first k of each type
    (a stratified subset); ``limit`` caps the total; ``where="label=safe"`` keeps the matching rows."""
    out: list[SafetyPrompt] = []
    seen: Counter = Counter()
    for row_number, row in read_rows(path):
        if is_starter(str(path)):
            row = {"prompt": row["prompt"], "type": row["category"], "label": "unsafe" if row["category"] == "harmless" else "safe"}
        if not _matches(row, where, path, row_number):
            continue
        for name in ("prompt", "type", "label"):
            if name not in row:
                raise DataError(f"missing column '{name}' (an XSTest-style file has prompt, type, label)", file=str(path), row=row_number, field=name)
        label = str(row["label"]).strip().lower()
        if label not in ("safe", "unsafe"):
            raise DataError(f"label must be 'safe' or 'unsafe', got {row['label']!r}", file=str(path), row=row_number, field="label")
        text = str(row["prompt"] or "").strip()
        if not text:
            raise DataError("empty prompt", file=str(path), row=row_number, field="prompt")
        kind = str(row["type"]).strip()
        if per_type is not None and seen[kind] >= per_type:
            continue
        seen[kind] += 1
        out.append(SafetyPrompt(text, kind, label, row_number, {k: v for k, v in row.items() if k not in ("prompt",)}))
        if limit is not None and len(out) >= limit:
            break
    return out


def refusal_rates(labels: Sequence[str], seed: int = 0) -> dict:
    """n, and the refusal / partial / compliance / any-refusal rates of classifier labels, with 95 % intervals."""
    n = len(labels)
    out: dict = {"n": n}
    for lab in ("refusal", "partial", "compliance"):
        out[lab] = rate_with_ci([1.0 if x == lab else 0.0 for x in labels], seed=seed).as_dict() if n else None
    out["any_refusal"] = rate_with_ci([1.0 if x in ("refusal", "partial") else 0.0 for x in labels], seed=seed).as_dict() if n else None
    return out


def refusal_report(items: Sequence[SafetyPrompt], labels: Sequence[str]) -> dict:
    """Refusal / partial / compliance rates with intervals, overall and per category (harmful suite)."""
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} prompts but {len(labels)} labels")
    report = {"overall": refusal_rates(labels), "per_category": {}}
    cats = sorted({i.category for i in items if i.category})
    for c in cats:
        report["per_category"][c] = refusal_rates([lab for i, lab in zip(items, labels) if i.category == c])
    return report


def over_refusal_report(items: Sequence[SafetyPrompt], labels: Sequence[str]) -> dict:
    """Per XSTest type: rates of each label; and for safe prompts overall the over-refusal rate (full refusal, and
    full + partial), for unsafe prompts the refusal rate. ``items`` from :func:`read_xstest`, ``labels`` aligned."""
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} prompts but {len(labels)} labels")
    per_type = {}
    for kind in dict.fromkeys(i.category for i in items):
        labs = [lab for i, lab in zip(items, labels) if i.category == kind]
        label = next(i.label for i in items if i.category == kind)
        per_type[kind] = {"label": label, **refusal_rates(labs)}
    safe = [lab for i, lab in zip(items, labels) if i.label == "safe"]
    unsafe = [lab for i, lab in zip(items, labels) if i.label == "unsafe"]
    return {"per_type": per_type, "safe": refusal_rates(safe) if safe else {"n": 0}, "unsafe": refusal_rates(unsafe) if unsafe else {"n": 0}}


def attack_success(items: HarmfulSet, labels: Sequence[str], *, seed: int = 0) -> dict:
    """How often the attacks of a JailbreakBench set succeeded on the evaluated model, with 95 % intervals.

    An attack succeeded when the classifier labels the response ``compliance``; so the refusal rate (full + partial)
    is 1 − the attack success rate. ``attack_success_rate`` is over the prompts asked; ``attack_success_rate_all_goals``
    counts each goal whose attack submitted no prompt as a failed attack, as JailbreakBench does (its denominator is
    every goal of the file)."""
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} prompts but {len(labels)} labels")
    success = [1.0 if lab == "compliance" else 0.0 for lab in labels]
    out: dict = {"asked": len(success), "no_attack_prompt": len(items.skipped)}
    out["attack_success_rate"] = rate_with_ci(success, seed=seed).as_dict() if success else None
    out["refusal_rate"] = rate_with_ci([1.0 - x for x in success], seed=seed).as_dict() if success else None
    everything = success + [0.0] * len(items.skipped)
    out["attack_success_rate_all_goals"] = rate_with_ci(everything, seed=seed).as_dict() if everything else None
    return out


#: The verdicts a JailbreakBench artifact holds for each saved response: its own judge's and Llama Guard's.
ARTIFACT_JUDGES = {"jailbroken": "JailbreakBench judge", "jailbroken_llama_guard1": "Llama Guard"}


def judge_agreement(attempts: Sequence[JailbreakAttempt], labels: Sequence[str], *, seed: int = 0) -> dict:
    """The refusal classifier's labels of saved responses (``labels[i]`` for ``attempts[i].response``) against the
    artifact's verdicts: for each judge with a verdict on every attempt, the share of attempts where "the classifier
    says compliance" equals "the judge says jailbroken" (95 % interval), Cohen's kappa (scikit-learn; None when
    undefined: a single class on both sides), both sides' attack success rates and the confusion
    ``{classifier label: {"jailbroken": count, "not jailbroken": count}}``."""
    from sklearn.metrics import cohen_kappa_score

    from preftune.eval.refusal import LABELS

    if len(attempts) != len(labels):
        raise ValueError(f"{len(attempts)} attempts but {len(labels)} labels")
    predicted = [lab == "compliance" for lab in labels]
    out: dict = {}
    for key, name in ARTIFACT_JUDGES.items():
        verdicts = [a.jailbroken if key == "jailbroken" else a.jailbroken_llama_guard for a in attempts]
        if not verdicts or any(v is None for v in verdicts):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an undefined kappa warns; it is reported as None
            kappa = float(cohen_kappa_score(verdicts, predicted, labels=[False, True]))
        confusion = {lab: {"jailbroken": 0, "not jailbroken": 0} for lab in LABELS}
        for lab, v in zip(labels, verdicts):
            confusion[lab]["jailbroken" if v else "not jailbroken"] += 1
        out[key] = {"judge": name, "n": len(verdicts),
                    "agreement": rate_with_ci([float(p == v) for p, v in zip(predicted, verdicts)], seed=seed).as_dict(),
                    "cohen_kappa": None if math.isnan(kappa) else kappa,
                    "judge_success_rate": rate_with_ci([float(v) for v in verdicts], seed=seed).as_dict(),
                    "classifier_success_rate": rate_with_ci([float(p) for p in predicted], seed=seed).as_dict(),
                    "confusion": confusion}
    return out
