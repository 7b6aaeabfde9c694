"""``--push-to-hub REPO``: after the final model and its model card are saved, ``final/`` is uploaded with
huggingface_hub's ``HfApi`` (replaced here by a recorder: the network is never used); a failed upload is a clear
error that leaves the saved model in place."""

from __future__ import annotations

import json

import pytest


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records the calls and the files of the uploaded folder."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        from pathlib import Path

        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", kwargs, files))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return RecordingHfApi.calls


@pytest.fixture
def data(tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."} for i in range(4)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rew.py").write_text("def vowels(prompt, response):\n    return sum(c in 'aeo' for c in response) / 10\n")
    return path


def _argv(command, tiny_lm, data, out):
    model = ["--model", str(tiny_lm), "--output-dir", str(out)]
    reward = ["--reward", f"{data.parent / 'rew.py'}:vowels", "--max-new-tokens", "4", "--batch-size", "2"]
    if command == "grpo":
        return ["grpo", *model, *reward, "--prompts", str(data), "--num-samples", "2", "--steps", "1", "--sample-every", "0"]
    if command == "rejection-sampling":
        return ["rejection-sampling", *model, *reward, "--prompts", str(data), "--n", "2"]
    if command == "dpo --online":
        return ["dpo", *model, *reward, "--online", "--data", str(data), "--max-steps", "1"]
    return [command, *model, "--data", str(data), "--batch-size", "2", "--max-steps", "1"]


@pytest.mark.parametrize("command", ["sft", "reward", "grpo", "dpo --online", "rejection-sampling"])
def test_the_final_folder_is_uploaded_after_it_is_saved(hub, tiny_lm, data, tmp_path, command):
    from preftune.cli import main

    out = tmp_path / "run"
    assert main(_argv(command, tiny_lm, data, out) + ["--push-to-hub", "me/tiny", "--hub-private"]) == 0
    assert [c[0] for c in hub] == ["create_repo", "upload_folder"]
    assert hub[0][1:] == ("me/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    _, upload, files = hub[1]
    assert upload == {
        "repo_id": "me/tiny",
        "folder_path": str(out / "final"),
        "repo_type": "model",
        "commit_message": "preftune: upload run",
    }
    # the model, its tokenizer and its card were all there when the upload started
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)


def test_no_push_without_the_flag(hub, tiny_lm, data, tmp_path):
    from preftune.cli import main

    assert main(_argv("sft", tiny_lm, data, tmp_path / "run")) == 0
    assert hub == []


def test_a_failed_push_keeps_the_saved_model(monkeypatch, tiny_lm, data, tmp_path, capsys):
    import huggingface_hub

    from preftune.cli import main

    # a token, but the hub (a loopback port nobody listens on) cannot be reached: huggingface_hub's own client fails
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    out = tmp_path / "run"
    assert main(_argv("sft", tiny_lm, data, out) + ["--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert (
        "preftune sft: error: --push-to-hub me/tiny: the upload failed (ConnectError: [Errno 111] Connection refused); "
        f"the model is saved in {out / 'final'}; upload it later with `hf upload me/tiny {out / 'final'}`"
    ) in err
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "README.md").exists()


def test_no_token_is_a_clear_error(monkeypatch, tmp_path):
    from preftune.errors import PreftuneError
    from preftune.runs import push_to_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    (tmp_path / "final").mkdir()
    with pytest.raises(PreftuneError) as err:
        push_to_hub(tmp_path / "final", "me/tiny")
    assert str(err.value) == (
        "--push-to-hub me/tiny: no Hugging Face token (set HF_TOKEN or run `hf auth login`); the model "
        f"is saved in {tmp_path / 'final'}; upload it later with `hf upload me/tiny {tmp_path / 'final'}`"
    )
    with pytest.raises(PreftuneError) as err:
        push_to_hub(tmp_path / "missing", "me/tiny")
    assert str(err.value) == f"--push-to-hub me/tiny: {tmp_path / 'missing'} does not exist; nothing to upload"
