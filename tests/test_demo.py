"""`preftune demo` runs every stage of the pipeline (on a tiny model here; `make demo` uses the default model)."""

from __future__ import annotations

import json

from preftune.cli import main


def test_demo_runs_the_whole_pipeline_on_a_tiny_model(tmp_path, monkeypatch):
    # no default model needed: every stage, the data statistics included, uses the --model given (the data stage
    # asked for the default tokenizer, so the demo failed where the default model is absent: a GPU machine offline)
    from preftune.models import loading
    from preftune.models.loading import tiny_model, tiny_tokenizer

    real = loading.resolve_model_path

    def no_default(name=None):
        if str(name or loading.DEFAULT_MODEL) in loading.ALIASES:
            raise AssertionError("the demo on a tiny model asked for the default model")
        return real(name)

    monkeypatch.setattr(loading, "resolve_model_path", no_default)

    model_dir = tmp_path / "tiny"
    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model_dir), "--output-dir", str(out), "--steps", "1", "--ppo-steps", "1",
                 "--eval-prompts", "2", "--max-new-tokens", "4"]) == 0
    for stage in ("sft", "reward", "dpo", "ppo"):
        assert (out / stage / "final").is_dir(), stage
    for name in ("dpo", "ppo"):
        report = json.loads((out / f"eval-{name}" / "report.json").read_text())
        assert report  # the evaluation wrote its report
        assert (out / f"eval-{name}" / "report.html").stat().st_size > 0
