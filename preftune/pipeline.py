"""``preftune pipeline RECIPE``: several preftune commands run in order as one resumable pipeline.

A recipe is a YAML file::

    description: SFT, then DPO from the SFT model
    output_dir: runs/my-pipeline          # one run folder per stage goes under here
    variables:                            # ${name} anywhere below; override with --set name=value
      model: smollm2-135m-instruct
      steps: 16
    stages:                               # in order; each an ordinary preftune command with its options
      sft:
        command: sft
        options: {model: "${model}", data: "starter:train", max_steps: "${steps}"}
      dpo:
        command: dpo
        options: {model: "${sft.final}", data: "starter:train"}

References: ``${VARIABLE}``, ``${STAGE.dir}`` (an earlier stage's run folder), ``${STAGE.final}`` (its saved model,
``STAGE.dir/final``) and ``${output_dir}``. A string that is exactly one reference keeps the referenced value's type
(``max_steps: "${steps}"`` stays a number). A stage whose command has an ``output_dir`` option gets
``OUTPUT_DIR/STAGE`` unless the recipe sets one.

Every stage is validated before anything runs (a misspelt option fails at once, naming the stage). The pipeline
records each finished stage with its resolved options in ``OUTPUT_DIR/pipeline.json``; run again, it skips the
stages finished with the same options and continues with the first unfinished one. A finished stage whose options
changed since is an error unless ``--redo`` names it (``--redo STAGE`` reruns that stage and every later one).
A name without a path (``demo``) names a recipe shipped with preftune (``preftune/recipes/``). A recipe can
``extends: OTHER`` (a name or a path relative to it): it takes OTHER's stages and variables and overrides what it sets.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from preftune.config import BaseConfig, Command, build_config, file_or_shipped
from preftune.distributed import launch_requested, relaunch
from preftune.errors import PreftuneError

RECIPES_DIR = Path(__file__).parent / "recipes"
STATE_FILE = "pipeline.json"
_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


@dataclass(frozen=True)
class Stage:
    name: str
    command: str  # a preftune command as typed: "sft", "data inspect", ...
    options: dict[str, Any]  # its options with ${...} references still in


@dataclass(frozen=True)
class Recipe:
    path: Path
    description: str
    output_dir: str
    variables: dict[str, Any]
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class ResolvedStage:
    name: str
    command: Command
    options: dict[str, Any]  # references resolved, output_dir filled in
    config: BaseConfig

    @property
    def command_line(self) -> str:
        """The same stage as a command a user could type."""
        args = [f"preftune {self.command.name}"]
        args += [shlex.quote(str(self.options[p])) for p in self.command.positional if p in self.options]
        for key, value in self.options.items():
            if key in self.command.positional:
                continue
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is False:
                args.append("--no-" + key.replace("_", "-"))
            elif value is not None:
                text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
                args += [flag, shlex.quote(text)]
            elif self.command.config_cls.model_fields[key].default is not None:
                args += [flag, "null"]  # an option turned off, where leaving the flag out would give its default
        return " ".join(args)


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path, or the name of a shipped recipe (``demo`` -> ``preftune/recipes/demo.yaml``)."""
    path = file_or_shipped(name_or_path, RECIPES_DIR)
    if path is not None:
        return path
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise PreftuneError(f"recipe {name_or_path} is neither a file nor a shipped recipe ({', '.join(names)})")


def _field(data: dict, key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise PreftuneError(f"{where}: missing field '{key}'")
        return default
    if not isinstance(data[key], kind):
        raise PreftuneError(f"{where}: field '{key}' must be a {kind.__name__}, got {type(data[key]).__name__}")
    return data[key]


def load_recipe(name_or_path: str) -> Recipe:
    """Read and check a recipe's shape (options are checked against each command by :func:`resolve_stages`)."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PreftuneError(f"recipe {path}: not valid YAML ({err})") from None
    where = f"recipe {path}"
    if not isinstance(data, dict):
        raise PreftuneError(f"{where}: must hold a mapping with 'stages'")
    unknown = set(data) - {"description", "output_dir", "variables", "stages", "extends"}
    if unknown:
        raise PreftuneError(f"{where}: unknown field '{sorted(unknown)[0]}' (fields: description, extends, output_dir, variables, stages)")
    if "extends" in data:
        parent = str(_field(data, "extends", str, where))
        relative = path.parent / parent
        base = load_recipe(str(relative) if relative.is_file() else parent)
        return Recipe(path, str(data.get("description", base.description)),
                      _field(data, "output_dir", str, where, f"runs/{path.stem}"),
                      {**base.variables, **(_field(data, "variables", dict, where, {}) or {})},
                      _stages(data, where) if "stages" in data else base.stages)
    return Recipe(path, str(data.get("description", "")), _field(data, "output_dir", str, where, f"runs/{path.stem}"),
                  dict(_field(data, "variables", dict, where, {}) or {}), _stages(data, where))


def _stages(data: dict, where: str) -> tuple[Stage, ...]:
    stages = []
    for name, body in _field(data, "stages", dict, where).items():
        at = f"{where}, stage '{name}'"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise PreftuneError(f"{at}: a stage name is letters, digits, '-' and '_'")
        if not isinstance(body, dict):
            raise PreftuneError(f"{at}: must be a mapping with 'command' and 'options'")
        extra = set(body) - {"command", "options"}
        if extra:
            raise PreftuneError(f"{at}: unknown field '{sorted(extra)[0]}' (fields: command, options)")
        stages.append(Stage(str(name), _field(body, "command", str, at), dict(_field(body, "options", dict, at, {}) or {})))
    if not stages:
        raise PreftuneError(f"{where}: no stages")
    return tuple(stages)


def _command(name: str, where: str) -> Command:
    from preftune.cli import COMMANDS

    if name not in COMMANDS or name == "pipeline":
        import difflib

        close = difflib.get_close_matches(name, [n for n in COMMANDS if n != "pipeline"], n=1)
        raise PreftuneError(f"{where}: unknown command '{name}'{f'; did you mean {close[0]!r}?' if close else ''}")
    module, attr = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), attr)


def _substitute(value: Any, lookup, where: str) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, lookup, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, lookup, where) for v in value]
    if not isinstance(value, str):
        return value
    whole = _REFERENCE.fullmatch(value)
    if whole:
        return lookup(whole.group(1), where)
    return _REFERENCE.sub(lambda m: str(lookup(m.group(1), where)), value)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["model=x", "steps=4"]`` -> ``{"model": "x", "steps": 4}`` (values read as YAML, like command-line flags)."""
    from preftune.config import parse_value

    out = {}
    for item in assignments:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise PreftuneError(f"--set takes NAME=VALUE, got {item!r}")
        out[key.strip()] = parse_value(text)
    return out


def resolve_stages(recipe: Recipe, *, output_dir: str | None = None, variables: dict | None = None) -> list[ResolvedStage]:
    """Every stage with its references resolved and its options validated by its command's config."""
    unknown = set(variables or {}) - set(recipe.variables)
    if unknown:
        raise PreftuneError(f"--set {sorted(unknown)[0]}: recipe {recipe.path} has no such variable "
                            f"(its variables: {', '.join(recipe.variables) or 'none'})")
    values = {**recipe.variables, **(variables or {})}
    root = output_dir or recipe.output_dir
    dirs: dict[str, str] = {}

    def lookup(ref: str, where: str) -> Any:
        if ref == "output_dir":
            return root
        if ref in values:
            return values[ref]
        stage, _, part = ref.partition(".")
        if stage in dirs and part in ("dir", "final"):
            return dirs[stage] if part == "dir" else f"{dirs[stage]}/final"
        if any(s.name == stage for s in recipe.stages):
            raise PreftuneError(f"{where}: ${{{ref}}} refers to a stage that does not run before this one (or to "
                                f"something other than .dir / .final)")
        raise PreftuneError(f"{where}: ${{{ref}}} is neither a variable ({', '.join(values) or 'none'}) nor an earlier stage")

    resolved = []
    for stage in recipe.stages:
        where = f"recipe {recipe.path}, stage '{stage.name}'"
        if stage.name in dirs:
            raise PreftuneError(f"{where}: a second stage of that name")
        command = _command(stage.command, where)
        options = _substitute(stage.options, lookup, where)
        if "output_dir" in command.config_cls.model_fields and "output_dir" not in options:
            options["output_dir"] = f"{root}/{stage.name}"
        dirs[stage.name] = str(options.get("output_dir", f"{root}/{stage.name}"))
        config = build_config(command.config_cls, options, where)
        resolved.append(ResolvedStage(stage.name, command, options, config))
    return resolved


def _read_state(path: Path) -> dict:
    if not path.exists():
        return {"stages": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise PreftuneError(f"{path} is damaged (not JSON); delete it to run every stage again") from None


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)  # atomic: a killed run leaves the old state or the new one, never half of one


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_recipe(recipe: Recipe, *, output_dir: str | None = None, variables: dict | None = None,
               redo: list[str] | tuple[str, ...] = (), until: str | None = None, dry_run: bool = False) -> dict:
    """Run the recipe's unfinished stages in order (up to ``until`` when given); returns the pipeline state
    (``pipeline.json``)."""
    stages = resolve_stages(recipe, output_dir=output_dir, variables=variables)
    names = [s.name for s in stages]
    for option, name in [("--redo", n) for n in redo] + ([("--until", until)] if until else []):
        if name not in names:
            raise PreftuneError(f"{option} {name}: recipe {recipe.path} has no such stage (stages: {', '.join(names)})")
    if until:
        stages = stages[: names.index(until) + 1]
    first_redo = min((names.index(n) for n in redo), default=len(names))
    root = Path(output_dir or recipe.output_dir)
    state_path = root / STATE_FILE
    state = _read_state(state_path)
    state.update({"recipe": str(recipe.path), "variables": {**recipe.variables, **(variables or {})}})
    done = state.setdefault("stages", {})
    if not dry_run:
        root.mkdir(parents=True, exist_ok=True)
    total = len(names)
    for i, stage in enumerate(stages):
        record = done.get(stage.name)
        finished = record is not None and record.get("status") == "finished" and i < first_redo
        if finished and record.get("options") != json.loads(json.dumps(stage.options)):
            raise PreftuneError(f"stage '{stage.name}' finished earlier with other options ({state_path}); "
                                f"pass --redo {stage.name} to run it and the later stages again")
        header = f"[{i + 1}/{total}] {stage.name}"
        if finished:
            _say(f"{header}: finished earlier ({record.get('seconds', 0):.0f} s), skipped")
            continue
        _say(f"\n{header}: {stage.command_line}")
        if dry_run:
            continue
        done[stage.name] = {"command": stage.command.name, "options": stage.options, "status": "running"}
        for later in names[i + 1:]:  # later stages depend on this one: they run again too
            done.pop(later, None)
        _write_state(state_path, state)
        start = time.time()
        if launch_requested(stage.config):  # the stage's --accelerate-config / --num-processes
            code = relaunch(shlex.split(stage.command_line)[1:], stage.config.accelerate_config, stage.config.num_processes)
        else:
            code = int(stage.command.run(stage.config) or 0)
        seconds = time.time() - start
        if code != 0:
            done[stage.name].update(status="failed", exit_code=code, seconds=seconds)
            _write_state(state_path, state)
            raise PreftuneError(f"stage '{stage.name}' ({stage.command.name}) exited with status {code}")
        done[stage.name].update(status="finished", seconds=round(seconds, 1))
        _write_state(state_path, state)
        _say(f"--- {header}: finished in {seconds:.0f} s")
    return state


class PipelineConfig(BaseConfig):
    recipe: str = Field(description="a recipe file, or the name of a shipped recipe (demo, demo-quick, ...)")
    output_dir: str | None = Field(None, description="where the stages' run folders go (default: the recipe's output_dir)")
    set: list[str] | str = Field(default_factory=list, description="override recipe variables: --set model=NAME (or a YAML list of NAME=VALUE)")
    redo: list[str] | str = Field(default_factory=list, description="run this stage (a name, or a YAML list of names) and every later one again although they finished")
    until: str | None = Field(None, description="stop after this stage (run the rest later: finished stages are skipped)")
    dry_run: bool = Field(False, description="print the stages' commands without running them")


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def run(config: PipelineConfig) -> int:
    recipe = load_recipe(config.recipe)
    state = run_recipe(recipe, output_dir=config.output_dir, variables=parse_assignments(_as_list(config.set)),
                       redo=_as_list(config.redo), until=config.until, dry_run=config.dry_run)
    if not config.dry_run:
        seconds = sum(s.get("seconds", 0) for s in state["stages"].values())
        print(f"pipeline {recipe.path.stem}: {len(state['stages'])} stages finished ({seconds:.0f} s of work) under "
              f"{config.output_dir or recipe.output_dir}")
    return 0


PIPELINE = Command("pipeline", "Run a recipe: several preftune commands in order, resuming from the last finished stage",
                   PipelineConfig, run, positional=("recipe",), description=__doc__.split("\n\n")[0])
