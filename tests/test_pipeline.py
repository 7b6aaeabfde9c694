"""`preftune pipeline`: recipes, references between stages, validation before running, resume, --redo."""

from __future__ import annotations

import json

import pytest

from preftune.cli import main
from preftune.errors import PreftuneError
from preftune.pipeline import load_recipe, parse_assignments, resolve_stages, run_recipe


@pytest.fixture
def counted(monkeypatch):
    """The stages' commands replaced by counters (the machinery is under test, not the commands)."""
    from preftune.commands import offline

    seen: list[tuple[str, str, str]] = []

    def fake(name):
        def run(config):
            seen.append((name, config.model, config.output_dir))
            return 0
        return run

    monkeypatch.setattr(offline.SFT, "run", fake("sft"))
    monkeypatch.setattr(offline.DPO, "run", fake("dpo"))
    return seen


def _recipe(tmp_path, body: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(body)
    return path


TWO_STAGES = """
description: SFT then DPO
output_dir: {out}
variables: {{model: base-model, steps: 3}}
stages:
  sft:
    command: sft
    options: {{model: "${{model}}", max_steps: "${{steps}}"}}
  dpo:
    command: dpo
    options: {{model: "${{sft.final}}", max_steps: "${{steps}}", beta: 0.2}}
"""


def test_references_resolve_with_types_and_output_dirs(tmp_path):
    recipe = load_recipe(str(_recipe(tmp_path, TWO_STAGES.format(out=tmp_path / "runs"))))
    sft, dpo = resolve_stages(recipe, variables={"steps": 5})
    assert sft.options == {"model": "base-model", "max_steps": 5, "output_dir": f"{tmp_path}/runs/sft"}
    assert dpo.options == {"model": f"{tmp_path}/runs/sft/final", "max_steps": 5, "beta": 0.2, "output_dir": f"{tmp_path}/runs/dpo"}
    assert dpo.config.max_steps == 5 and dpo.config.beta == 0.2
    assert dpo.command_line == (f"preftune dpo --model {tmp_path}/runs/sft/final --max-steps 5 --beta 0.2 "
                                f"--output-dir {tmp_path}/runs/dpo")


def test_an_option_turned_off_prints_as_null_and_reads_back_as_none(tmp_path):
    """A null option whose default is not None (SFT's eval_data defaults to "auto") must be printed, or the command a
    user copies from the dry run would quietly get the default back."""
    from preftune.commands.offline import SFTConfig
    from preftune.config import build_config, parse_value

    recipe = load_recipe(str(_recipe(tmp_path, TWO_STAGES.format(out=tmp_path / "runs").replace(
        'max_steps: "${steps}"}', 'max_steps: "${steps}", eval_data: null}', 1))))
    sft, _ = resolve_stages(recipe)
    assert sft.config.eval_source() is None
    assert sft.command_line == f"preftune sft --model base-model --max-steps 3 --eval-data null --output-dir {tmp_path}/runs/sft"
    typed = build_config(SFTConfig, {"model": "base-model", "eval_data": parse_value("null")}, "test")
    assert typed.eval_source() is None


def test_runs_in_order_then_skips_finished_stages(tmp_path, counted, capsys):
    path = _recipe(tmp_path, TWO_STAGES.format(out=tmp_path / "runs"))
    assert main(["pipeline", str(path)]) == 0
    assert counted == [("sft", "base-model", f"{tmp_path}/runs/sft"), ("dpo", f"{tmp_path}/runs/sft/final", f"{tmp_path}/runs/dpo")]
    state = json.loads((tmp_path / "runs" / "pipeline.json").read_text())
    assert [(n, s["status"]) for n, s in state["stages"].items()] == [("sft", "finished"), ("dpo", "finished")]
    assert "[1/2] sft: preftune sft --model base-model --max-steps 3" in capsys.readouterr().err
    assert main(["pipeline", str(path)]) == 0  # both finished: nothing runs
    assert len(counted) == 2
    assert "[2/2] dpo: finished earlier" in capsys.readouterr().err
    assert main(["pipeline", str(path), "--redo", "dpo"]) == 0  # only dpo again
    assert [c[0] for c in counted] == ["sft", "dpo", "dpo"]
    assert main(["pipeline", str(path), "--redo", "sft"]) == 0  # sft and everything after it
    assert [c[0] for c in counted] == ["sft", "dpo", "dpo", "sft", "dpo"]


def test_a_failed_stage_resumes_there(tmp_path, counted, monkeypatch):
    from preftune.commands import offline

    path = _recipe(tmp_path, TWO_STAGES.format(out=tmp_path / "runs"))
    monkeypatch.setattr(offline.DPO, "run", lambda config: 3)
    with pytest.raises(PreftuneError, match=r"stage 'dpo' \(dpo\) exited with status 3"):
        run_recipe(load_recipe(str(path)))
    state = json.loads((tmp_path / "runs" / "pipeline.json").read_text())
    assert (state["stages"]["sft"]["status"], state["stages"]["dpo"]["status"]) == ("finished", "failed")
    ran = []
    monkeypatch.setattr(offline.DPO, "run", lambda config: ran.append(config.model) or 0)
    run_recipe(load_recipe(str(path)))
    assert [c[0] for c in counted] == ["sft"] and ran == [f"{tmp_path}/runs/sft/final"]  # sft not redone


def test_changed_options_of_a_finished_stage_need_redo(tmp_path, counted):
    path = _recipe(tmp_path, TWO_STAGES.format(out=tmp_path / "runs"))
    run_recipe(load_recipe(str(path)))
    with pytest.raises(PreftuneError, match=r"stage 'sft' finished earlier with other options .*pass --redo sft"):
        run_recipe(load_recipe(str(path)), variables={"steps": 4})
    run_recipe(load_recipe(str(path)), variables={"steps": 4}, redo=["sft"])
    assert [c[0] for c in counted] == ["sft", "dpo", "sft", "dpo"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.replace("beta: 0.2", "betta: 0.2"), r"stage 'dpo': unknown option 'betta'; did you mean 'beta'\?"),
    (lambda s: s.replace("${{sft.final}}", "${{dpo.final}}"), r"stage 'dpo': \$\{dpo.final\} refers to a stage that does not run before this one"),
    (lambda s: s.replace("${{model}}", "${{modle}}"), r"stage 'sft': \$\{modle\} is neither a variable \(model, steps\) nor an earlier stage"),
    (lambda s: s.replace("command: dpo", "command: dop"), r"stage 'dpo': unknown command 'dop'; did you mean 'dpo'\?"),
    (lambda s: s.replace("max_steps: \"${{steps}}\", beta", "max_steps: -1, beta"), r"stage 'dpo': option 'max_steps': Input should be greater than or equal to 1"),
    (lambda s: s.replace("stages:", "stagess:"), r"unknown field 'stagess'"),
])
def test_bad_recipes_fail_before_anything_runs(tmp_path, counted, edit, message):
    path = _recipe(tmp_path, edit(TWO_STAGES).format(out=tmp_path / "runs"))
    with pytest.raises(PreftuneError, match=message):
        run_recipe(load_recipe(str(path)))
    assert counted == []


def test_set_and_shipped_recipes(tmp_path):
    assert parse_assignments(["model=x", "steps=4", "lr=2.0e-5", "lora=true"]) == {"model": "x", "steps": 4, "lr": 2e-5, "lora": True}
    with pytest.raises(PreftuneError, match=r"--set takes NAME=VALUE, got 'model'"):
        parse_assignments(["model"])
    recipe = load_recipe(str(_recipe(tmp_path, TWO_STAGES.format(out=tmp_path))))
    with pytest.raises(PreftuneError, match=r"--set stesp: recipe .* has no such variable \(its variables: model, steps\)"):
        resolve_stages(recipe, variables={"stesp": 1})
    quick = load_recipe("demo-quick")  # extends demo: its stages, smaller variables
    demo = load_recipe("demo")
    assert quick.stages == demo.stages and quick.variables["steps"] == 4 and demo.variables["steps"] == 16
    with pytest.raises(PreftuneError, match=r"recipe nope is neither a file nor a shipped recipe \(demo, demo-quick"):
        load_recipe("nope")
    for name in ("demo", "demo-quick"):  # every shipped recipe validates against the commands
        assert len(resolve_stages(load_recipe(name))) == len(demo.stages)


def test_until_stops_after_a_stage_and_the_rest_runs_later(tmp_path, counted):
    path = _recipe(tmp_path, TWO_STAGES.format(out=tmp_path / "runs"))
    assert main(["pipeline", str(path), "--until", "sft"]) == 0
    assert [c[0] for c in counted] == ["sft"]
    assert main(["pipeline", str(path)]) == 0
    assert [c[0] for c in counted] == ["sft", "dpo"]
    with pytest.raises(PreftuneError, match=r"--until ppo: recipe .* has no such stage \(stages: sft, dpo\)"):
        run_recipe(load_recipe(str(path)), until="ppo")
