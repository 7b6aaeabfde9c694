"""`preftune demo` (the recipe demo.yaml run by `preftune pipeline`) on a tiny model: every stage runs, and every
stage presents the same prompt as the same token ids (`make demo` runs it on the default model)."""

from __future__ import annotations

import json
import sys

import pytest

from preftune.cli import main


@pytest.fixture
def tiny_model_dir(tmp_path):
    from preftune.models.loading import tiny_model, tiny_tokenizer

    model_dir = tmp_path / "tiny"
    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


@pytest.fixture
def no_default_model(monkeypatch):
    # every stage, the data statistics included, uses the --model given (the data stage once asked for the default
    # tokenizer, so the demo failed where the default model is absent: a GPU machine offline)
    from preftune.models import loading

    real = loading.resolve_model_path

    def no_default(name=None):
        if str(name or loading.DEFAULT_MODEL) in loading.ALIASES:
            raise AssertionError("the demo on a tiny model asked for the default model")
        return real(name)

    monkeypatch.setattr(loading, "resolve_model_path", no_default)


@pytest.fixture
def prompt_spy(monkeypatch):
    """Records (stage, prompt, ids) of every encode_prompt call, wherever it was imported."""
    import preftune.commands.evaluate  # noqa: F401 -- import every module that binds encode_prompt at import time
    import preftune.data.inspect  # noqa: F401
    import preftune.generation.scoring  # noqa: F401
    import preftune.pipeline as pipeline
    import preftune.rewards.model  # noqa: F401
    import preftune.train.reward  # noqa: F401
    from preftune.data import tokenize

    original = tokenize.encode_prompt
    calls: list[tuple[str, str, tuple[int, ...]]] = []
    stage = {"name": None}

    def spy(tokenizer, prompt, *args, **kwargs):
        ids = original(tokenizer, prompt, *args, **kwargs)
        calls.append((stage["name"], json.dumps(prompt), tuple(ids)))
        return ids

    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "__name__", "").startswith("preftune") and getattr(module, "encode_prompt", None) is original:
            monkeypatch.setattr(module, "encode_prompt", spy)
    say = pipeline._say

    def tracking_say(message: str) -> None:
        if message.lstrip().startswith("[") and "] " in message:
            stage["name"] = message.split("] ", 1)[1].split(":", 1)[0]
        say(message)

    monkeypatch.setattr(pipeline, "_say", tracking_say)
    return calls


def test_demo_runs_every_stage_and_presents_each_prompt_identically(tmp_path, tiny_model_dir, no_default_model, prompt_spy):
    from preftune.data.readers import read_rows
    from preftune.models.loading import load_tokenizer

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--model", str(tiny_model_dir), "--output-dir", str(out), "--steps", "1",
                 "--ppo-steps", "1", "--eval-prompts", "2", "--max-new-tokens", "4", "--heldout"]) == 0
    for stage in ("sft", "reward", "dpo", "ppo"):
        assert (out / stage / "final").is_dir(), stage
        assert json.loads((out / stage / "final" / "preftune_prompt.json").read_text()) == {"chat_template": True}
    for name in ("dpo", "ppo", "best_of_n"):
        report = json.loads((out / f"eval_{name}" / "report.json").read_text())
        assert report["sections"]["win_rates"] is not None and report["sections"]["frontier"] is not None
        assert "<p class='off'>Not run" not in (out / f"eval_{name}" / "report.html").read_text()  # no empty sections
    for name in ("dpo", "ppo"):
        report = json.loads((out / f"eval_{name}" / "report.json").read_text())
        filled = {k for k, v in report["sections"].items() if v is not None}
        assert {"harmful", "over_refusal", "text_metrics", "training_curves", "frontier", "win_rates"} <= filled, name

    # one prompt, one presentation: every stage gives the same ids, and they are the chat template's
    by_prompt: dict[str, set] = {}
    stages_by_prompt: dict[str, set] = {}
    for stage, prompt, ids in prompt_spy:
        by_prompt.setdefault(prompt, set()).add(ids)
        stages_by_prompt.setdefault(prompt, set()).add(stage)
    assert {p: len(v) for p, v in by_prompt.items() if len(v) > 1} == {}
    tok = load_tokenizer(tiny_model_dir)
    test_prompt = json.dumps(next(r for _, r in read_rows("starter:test"))["prompt"])
    train_prompt = json.dumps(next(r for _, r in read_rows("starter:train"))["prompt"])
    assert {"sft", "reward", "dpo", "best_of_n", "frontier", "eval_dpo", "eval_ppo"} <= stages_by_prompt[test_prompt]
    assert {"sft", "reward", "dpo"} <= stages_by_prompt[train_prompt]
    assert tok.decode(list(next(iter(by_prompt[test_prompt])))).startswith("<|im_start|>user\n")

    # run again: every stage finished, nothing is redone
    state_before = json.loads((out / "pipeline.json").read_text())
    assert main(["demo", "--quick", "--model", str(tiny_model_dir), "--output-dir", str(out), "--steps", "1",
                 "--ppo-steps", "1", "--eval-prompts", "2", "--max-new-tokens", "4", "--heldout"]) == 0
    assert json.loads((out / "pipeline.json").read_text()) == state_before


def test_quick_demo_skips_the_held_out_passes_and_the_full_demo_keeps_them():
    """The quick demo's budget (5 minutes on 2 cores) has no room for the 35-45 s held-out pass of each training stage."""
    from preftune.pipeline import load_recipe, parse_assignments, resolve_stages

    def sources(recipe, **variables):
        stages = {s.name: s for s in resolve_stages(load_recipe(recipe), variables=variables)}
        return (stages["sft"].config.eval_source(), stages["reward"].config.eval_data, stages["dpo"].config.eval_source(),
                stages["sft"].config.batch_size, stages["reward"].config.normalize_examples)

    assert sources("demo-quick") == (None, None, None, 4, 64)
    assert sources("demo") == ("starter:test", "starter:test", "starter:test", 8, 512)
    assert sources("demo-quick", **parse_assignments(["heldout=starter:test"])) == ("starter:test",) * 3 + (4, 64)
