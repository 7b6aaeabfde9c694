"""Configs from YAML and flags, with the offending key named and a suggestion for a misspelt one; the CLI's help."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from preftune import cli
from preftune.config import BaseConfig, Command, format_help, parse_args
from preftune.errors import ConfigError


class Lora(BaseModel):
    r: int = 8
    alpha: float = 16.0


class DemoConfig(BaseConfig):
    data: str = Field("starter:train", description="training data")
    learning_rate: float = 1e-6
    max_steps: int = 10
    lora: bool = False
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    name: str = "run"
    adapter: Lora = Lora()
    stop: list[str] = []
    resume: bool | str = False
    precision: Literal["auto", "no", "off"] = "auto"
    label: str | None = "x"


COMMAND = Command("demo-cmd", "a test command", DemoConfig, lambda c: 0)


def test_flags_override_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 5.0e-7\nmax_steps: 3\nloss: ipo\n")
    cfg = parse_args(COMMAND, ["--config", str(path), "--max-steps", "7", "--lora", "--adapter.r", "4"])
    assert cfg == DemoConfig(learning_rate=5e-7, max_steps=7, lora=True, loss="ipo", adapter=Lora(r=4))


def test_value_forms():
    cfg = parse_args(COMMAND, ["--learning-rate=1e-5", "--no-lora", "--stop", '["a", "b"]', "--name", "123"])
    assert cfg.learning_rate == 1e-5 and cfg.lora is False and cfg.stop == ["a", "b"] and cfg.name == "123"
    assert parse_args(COMMAND, ["--lora", "false"]).lora is False
    # text-only options keep the text YAML would turn into a bool or a number ("no" was False: a validation error)
    assert parse_args(COMMAND, ["--precision", "no"]).precision == "no"
    assert parse_args(COMMAND, ["--precision=off", "--label", "1e3"]).precision == "off"
    assert parse_args(COMMAND, ["--label", "1e3"]).label == "1e3" and parse_args(COMMAND, ["--label", "null"]).label is None


def test_bool_or_path_flag():
    assert parse_args(COMMAND, ["--resume", "--max-steps", "2"]).resume is True
    assert parse_args(COMMAND, ["--max-steps", "2", "--resume"]).resume is True
    assert parse_args(COMMAND, ["--resume", "runs/x/checkpoints/step-2"]).resume == "runs/x/checkpoints/step-2"


def test_misspelt_flag_gets_a_suggestion():
    with pytest.raises(ConfigError) as info:
        parse_args(COMMAND, ["--lerning-rate", "1e-5"])
    assert str(info.value) == "preftune demo-cmd: unknown option 'lerning_rate'; did you mean 'learning_rate'?"


def test_misspelt_key_in_yaml_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_stpes: 3\n")
    with pytest.raises(ConfigError, match=r"unknown option 'max_stpes'; did you mean 'max_steps'\?"):
        parse_args(COMMAND, ["--config", str(path)])
    with pytest.raises(ConfigError) as info:
        parse_args(COMMAND, ["--adapter.alfa", "3"])
    assert str(info.value) == "preftune demo-cmd: unknown option 'adapter.alfa'; did you mean 'alpha'?"


def test_bad_value_names_the_option():
    with pytest.raises(ConfigError) as info:
        parse_args(COMMAND, ["--max-steps", "many"])
    assert str(info.value) == ("preftune demo-cmd: option 'max_steps': Input should be a valid integer, unable to parse "
                               "string as an integer (got 'many')")
    with pytest.raises(ConfigError, match=r"option 'loss': Input should be 'sigmoid' or 'ipo' \(got 'dpo'\)"):
        parse_args(COMMAND, ["--loss", "dpo"])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file .*missing.yaml does not exist"):
        parse_args(COMMAND, ["--config", str(tmp_path / "missing.yaml")])
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of option: value, got list"):
        parse_args(COMMAND, ["--config", str(path)])


def test_missing_value_and_stray_argument():
    with pytest.raises(ConfigError, match="option --max-steps needs a value"):
        parse_args(COMMAND, ["--max-steps"])
    with pytest.raises(ConfigError, match="unexpected argument 'oops'"):
        parse_args(COMMAND, ["oops"])


def test_help_lists_every_option():
    text = format_help(COMMAND)
    for flag in ("--data", "--learning-rate", "--max-steps", "--lora", "--loss ({sigmoid|ipo})", "--adapter"):
        assert flag in text
    assert "training data" in text


def test_main_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "data inspect" in out and "usage: preftune COMMAND" in out


def test_unknown_command_suggests(capsys):
    assert cli.main(["dat"]) == 2
    assert "unknown command 'dat'; did you mean 'data'?" in capsys.readouterr().err


def test_every_listed_command_has_help(capsys):
    """Each command present in this install answers --help with its options."""
    for name in cli._available():
        assert cli.main([*name.split(), "--help"]) == 0, name
        assert f"usage: preftune {name}" in capsys.readouterr().out


def test_user_errors_print_a_message_not_a_traceback(capsys):
    assert cli.main(["data", "inspect", "no/such.jsonl"]) == 2
    assert capsys.readouterr().err.strip() == "preftune data inspect: error: no/such.jsonl: no such file or folder"


def test_empty_text_option_stays_empty():
    """``--judge-api-key-env ''`` (a local server that needs no key) is the empty string, not null."""
    from preftune.commands.evaluate import EVAL

    config = parse_args(EVAL, ["--output-dir", "out", "--judge-api-key-env", ""])
    assert config.judge_api_key_env == ""
    assert parse_args(EVAL, ["--output-dir", "out", "--judge-api-key-env="]).judge_api_key_env == ""
    assert parse_args(EVAL, ["--output-dir", "out", "--limit", "3"]).limit == 3
