"""Model loading (paths, dtypes, tiny models) and run folders (config, metrics, checkpoints)."""

from __future__ import annotations


import pytest
import torch

from preftune.errors import PreftuneError
from preftune.models.loading import resolve_dtype, resolve_model_path, tiny_model
from preftune.runs import RunDir, read_metrics, resolve_resume


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(PreftuneError, match=r"model folder ./nowhere/model does not exist"):
        resolve_model_path("./nowhere/model")
    with pytest.raises(PreftuneError, match=r"model file .*x.gguf does not exist"):
        resolve_model_path(str(tmp_path / "x.gguf"))


def test_hub_ids_and_local_folders_pass_through(tmp_path):
    assert resolve_model_path("org/model") == "org/model"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_default_model_resolves_to_the_cached_conversion(tmp_path, monkeypatch):
    cached = tmp_path / "models" / "smollm2-135m-instruct"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    monkeypatch.setenv("PREFTUNE_HOME", str(tmp_path))
    assert resolve_model_path("smollm2-135m-instruct") == str(cached)
    assert resolve_model_path(None) == str(cached)


def test_dtypes():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(PreftuneError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", cpu)


def test_bf16_on_cpu_is_refused_when_torch_came_first(monkeypatch):
    import preftune

    monkeypatch.setattr(preftune, "BF16_CPU_SAFE", False)
    with pytest.raises(PreftuneError, match="bf16 on CPU needs ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"):
        resolve_dtype("bf16", torch.device("cpu"))


def test_tiny_models_are_deterministic():
    a, b = tiny_model(100, seed=3), tiny_model(100, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    gpt2 = tiny_model(100, kind="gpt2")
    assert gpt2(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 100)


def test_run_dir_metrics_config_and_checkpoints(tmp_path):
    from pydantic import BaseModel

    class C(BaseModel):
        lr: float = 0.1

    run = RunDir(tmp_path / "run")
    run.save_config(C())
    assert (run.path / "config.yaml").read_text() == "lr: 0.1\n"
    for step in (1, 2, 3):
        run.log(step, {"loss": torch.tensor(1.0 / step), "lr": 0.1})
    assert [r["step"] for r in read_metrics(run.path)] == [1, 2, 3]
    assert read_metrics(run.path)[1] == {"step": 2, "loss": 0.5, "lr": 0.1}
    run.truncate_metrics(after_step=2)
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2]
    # Only checkpoints marked COMPLETE count (a crash mid-save leaves none behind).
    for step, complete in ((2, True), (4, False)):
        d = run.checkpoint_dir(step)
        d.mkdir(parents=True)
        if complete:
            (d / "COMPLETE").write_text("")
    assert run.latest_checkpoint() == run.checkpoint_dir(2)
    assert resolve_resume(run, True) == run.checkpoint_dir(2)
    assert resolve_resume(run, False) is None
    with pytest.raises(PreftuneError, match="is not a complete checkpoint"):
        resolve_resume(run, str(run.checkpoint_dir(4)))


def test_resume_without_checkpoints(tmp_path):
    with pytest.raises(PreftuneError, match="--resume: no complete checkpoint under"):
        resolve_resume(RunDir(tmp_path), True)


def test_unknown_report_target(tmp_path):
    with pytest.raises(PreftuneError, match="report_to: unknown target 'mlflowx'"):
        RunDir(tmp_path, report_to=["mlflowx"])


@pytest.mark.slow
def test_default_model_answers_sensibly_offline(monkeypatch):
    """The built-in default loads with no network and answers a chat prompt with greedy decoding."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from preftune.data.tokenize import encode_prompt
    from preftune.models.loading import load_model, load_tokenizer

    tok, model = load_tokenizer(), load_model()
    ids = encode_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=20,
                         do_sample=False)
    answer = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in answer
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
