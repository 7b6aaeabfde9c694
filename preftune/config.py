"""Configs: pydantic models filled from ``--config file.yaml`` and ``--key value`` flags.

Every command is a :class:`Command`: a pydantic config class plus a ``run(config) -> int`` function.
Every field of the config is a flag (``--max-steps 10`` sets ``max_steps``; ``--lora`` alone sets a
boolean, ``--no-lora`` clears it; ``--lora.r 8`` sets a nested field). A YAML file given with
``--config`` supplies values that the flags then override. Unknown keys are errors that name the key
and suggest the closest field.
"""

from __future__ import annotations

import difflib
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from preftune.errors import ConfigError

# A config field named like a (deprecated) BaseModel method, e.g. `json` for a --json flag, is fine here.
warnings.filterwarnings("ignore", message=r'Field name "\w+" in "\w+" shadows an attribute in parent')


#: the help of every generating command's --decode-dtype (see preftune/generation/fast_decode.py)
DECODE_DTYPE_HELP = ("weights of the decode steps: auto (bf16 copies on a CPU with native bf16, else the model dtype), "
                     "float32, bfloat16, model")


#: the help of every command's --chat-template (see preftune/models/prompt_format.py)
CHAT_TEMPLATE_HELP = ("plain-text prompts become one user turn of the chat template (default: the choice recorded with the "
                      "model, else yes when the tokenizer has a template); --no-chat-template keeps them raw")


class BaseConfig(BaseModel):
    """Base of every command's config: unknown keys are rejected, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


class LaunchOptions(BaseModel):
    """Every training command's options for where it runs (a launch through accelerate) and where its model goes."""

    accelerate_config: str | None = Field(
        None, description="run under `accelerate launch` with this config: a shipped one (single-gpu, ddp, fsdp, fsdp-offload, "
                          "zero2, zero3, multi-node; docs/scaling.md) or a config file; ignored when already launched")
    num_processes: int | None = Field(
        None, ge=1, description="run as N processes under `accelerate launch` (with --accelerate-config, or else its ddp "
                                "config: GPUs, or CPU processes joined with gloo); on several machines, all of them together")
    push_to_hub: str | None = Field(
        None, description="after training, upload final/ (model and model card) to this Hugging Face Hub repo (user/name); "
                          "the token comes from HF_TOKEN or `hf auth login`")
    hub_private: bool = Field(False, description="--push-to-hub: create the repo private")


def with_launch_options(config_cls: type[BaseModel]) -> type[BaseModel]:
    """A training command's config class with :class:`LaunchOptions`' fields added after its own (last in ``--help``)."""
    fields = {name: (info.annotation, info) for name, info in LaunchOptions.model_fields.items()}
    return create_model(config_cls.__name__, __base__=config_cls, __module__=config_cls.__module__,
                        __doc__=config_cls.__doc__, **fields)


@dataclass
class Command:
    """A CLI command: its name, a one-line help, its config class and what runs it."""

    name: str
    help: str
    config_cls: type[BaseModel]
    run: Callable[[Any], int | None]
    positional: Sequence[str] = field(default_factory=tuple)  # config fields taken from positional arguments
    description: str = ""


def _suggest(key: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _is_bool(annotation: Any) -> bool:
    """A field that a bare flag can set: ``bool``, ``bool | None``, or ``bool | str`` (``--resume`` or ``--resume PATH``)."""
    return annotation is bool or bool in typing.get_args(annotation)


def _is_list(annotation: Any) -> bool:
    """A ``list[...]`` option (or ``list[...] | None``)."""
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def _text_only(annotation: Any) -> bool:
    """Whether an option takes only text: ``str``, a ``Literal`` of strings, or either of them or None."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return bool(args) and type(None) in typing.get_args(annotation) and all(_text_only(a) for a in args)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _field_for(cls: type[BaseModel], dotted: str, where: str) -> Any:
    """Check that a dotted key names a field of ``cls``; return its annotation."""
    parts = dotted.split(".")
    current: type[BaseModel] | None = cls
    annotation: Any = None
    for i, part in enumerate(parts):
        if current is None:
            raise ConfigError(f"{where}: '{'.'.join(parts[:i])}' has no sub-options (got '{dotted}')")
        fields = current.model_fields
        if part not in fields:
            prefix = ".".join(parts[:i])
            name = f"{prefix}.{part}" if prefix else part
            raise ConfigError(f"{where}: unknown option '{name}'{_suggest(part, list(fields))}")
        annotation = fields[part].annotation
        current = _submodel(annotation) if i < len(parts) - 1 else None
    return annotation


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def _check_keys(cls: type[BaseModel], data: dict, where: str, prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        annotation = _field_for(cls, dotted, where)
        if isinstance(value, dict) and _submodel(annotation) is not None:
            _check_keys(cls, value, where, prefix=f"{dotted}.")


def parse_value(text: str) -> Any:
    """A flag's value as YAML (numbers, booleans, lists); plain text stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"{where}: option '{loc}': {e['msg']}{got}")
    return "\n".join(lines)


def build_config(cls: type[BaseModel], values: dict, where: str = "config") -> BaseModel:
    """Validate ``values`` (possibly nested dicts) into ``cls`` with readable errors."""
    _check_keys(cls, values, where)
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_args(command: Command, argv: Sequence[str]) -> BaseModel:
    """Turn a command's arguments into its validated config."""
    cls = command.config_cls
    where = f"preftune {command.name}"
    overrides: list[tuple[str, Any]] = []
    positionals: list[str] = []
    config_path = None
    argv = list(argv)
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config":
            if i + 1 >= len(argv):
                raise ConfigError(f"{where}: --config needs a file path")
            config_path = argv[i + 1]
            i += 2
            continue
        if token.startswith("--") and len(token) > 2:
            key, eq, inline = token[2:].partition("=")
            key = key.replace("-", "_")
            negated = False
            if key.startswith("no_") and key not in cls.model_fields and key[3:].split(".")[0] in cls.model_fields:
                key, negated = key[3:], True
            annotation = _field_for(cls, key, where)
            if eq:
                value = parse_value(inline)
                i += 1
            elif _is_bool(annotation) and (i + 1 >= len(argv) or argv[i + 1].startswith("--") or (
                    set(typing.get_args(annotation)) <= {bool, type(None)}
                    and argv[i + 1].lower() not in ("true", "false", "1", "0", "yes", "no"))):
                value = not negated
                i += 1
            elif _is_list(annotation) and not eq:
                # a list option takes every value up to the next flag: --models A B C (or one YAML list: "[A, B]")
                values = []
                i += 1
                while i < len(argv) and not argv[i].startswith("--"):
                    values.append(argv[i])
                    i += 1
                if not values:
                    raise ConfigError(f"{where}: option --{key.replace('_', '-')} needs a value")
                parsed = parse_value(values[0]) if len(values) == 1 else None
                value = parsed if isinstance(parsed, list) else values
                overrides.append((key, value))
                continue
            else:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{where}: option --{key.replace('_', '-')} needs a value")
                value = parse_value(argv[i + 1])
                i += 2
            text = inline if eq else argv[i - 1]
            if not isinstance(value, str) and (value is not None or text == "") and _text_only(annotation):
                # YAML reads "no" / "off" as False, "123" as a number and "" as null: an option that only takes text
                # gets the text ('' included: --judge-api-key-env '' means "no key")
                value = text
            overrides.append((key, value))
            continue
        positionals.append(token)
        i += 1
    if len(positionals) > len(command.positional):
        extra = positionals[len(command.positional):]
        raise ConfigError(f"{where}: unexpected argument '{extra[0]}' (options are written --name value)")
    values: dict = load_config_file(config_path) if config_path else {}
    for name, value in zip(command.positional, positionals):
        values[name] = value
    for key, value in overrides:
        _set_dotted(values, key, value)
    missing = [p for p in command.positional if p not in values and cls.model_fields[p].is_required()]
    if missing:
        raise ConfigError(f"{where}: missing argument {missing[0].upper()}")
    return build_config(cls, values, where)


def _type_name(annotation: Any) -> str:
    if annotation is None:
        return ""
    if typing.get_origin(annotation) is typing.Literal:
        return "{" + "|".join(str(a) for a in typing.get_args(annotation)) + "}"
    name = getattr(annotation, "__name__", None)
    if name and not typing.get_args(annotation):
        return name
    return str(annotation).replace("typing.", "").replace("preftune.", "")


def format_help(command: Command) -> str:
    cls = command.config_cls
    usage = " ".join(p.upper() for p in command.positional)
    lines = [f"usage: preftune {command.name} {usage + ' ' if usage else ''}[--config FILE.yaml] [--option value ...]", ""]
    lines.append(command.description or command.help)
    lines.append("")
    lines.append("options (each can also be set in the --config YAML file; flags override it):")
    for name, info in cls.model_fields.items():
        flag = name if name in command.positional else "--" + name.replace("_", "-")
        default = "" if info.is_required() else f" [default: {info.get_default(call_default_factory=True)!r}]"
        desc = info.description or ""
        lines.append(f"  {flag} ({_type_name(info.annotation)}){default}")
        if desc:
            lines.append(f"      {desc}")
    return "\n".join(lines)


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def print_help(command: Command) -> None:
    sys.stdout.write(format_help(command) + "\n")


def file_or_shipped(name_or_path: str, folder: Path) -> Path | None:
    """A file the user names: an existing path, else the name of a file shipped in ``folder`` (``NAME.yaml``); None
    when neither (the caller's error lists what is shipped). Recipes and accelerate configs are found this way."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = folder / f"{name_or_path}.yaml"
    return shipped if "/" not in name_or_path and shipped.is_file() else None
