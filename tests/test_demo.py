"""`preftune demo` runs every stage of the pipeline (on a tiny model here; `make demo` uses the default model)."""

from __future__ import annotations

import json

from preftune.cli import main


def test_demo_runs_the_whole_pipeline_on_a_tiny_model(tmp_path, default_tokenizer):
    from preftune.models.loading import tiny_model, tiny_tokenizer

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
