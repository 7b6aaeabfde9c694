"""The rule checklist of the "rules" task (Sparrow-style: Glaese et al. 2022): a list of named rules from YAML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from preftune.errors import PreftuneError

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")


@dataclass(frozen=True)
class Rule:
    name: str
    text: str


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Rules from a YAML file: ``rules:`` (or the top level) is a list of strings or ``{name, text}`` mappings.
    ``None`` reads the project's default list."""
    path = Path(path) if path is not None else DEFAULT_RULES
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PreftuneError(f"rules file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise PreftuneError(f"rules file {path} is not valid YAML: {err}") from None
    items = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise PreftuneError(f"rules file {path}: expected a non-empty list of rules (under 'rules:')")
    rules = []
    for i, r in enumerate(items):
        if isinstance(r, str) and r.strip():
            rules.append(Rule(r.strip(), r.strip()))
        elif isinstance(r, dict) and isinstance(r.get("name"), str) and r["name"].strip():
            rules.append(Rule(r["name"].strip(), str(r.get("text") or r["name"]).strip()))
        else:
            raise PreftuneError(f"rules file {path}: rule {i + 1} must be text or a mapping with a 'name'")
    names = [r.name for r in rules]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise PreftuneError(f"rules file {path}: the rule '{dup}' appears twice")
    return rules
