"""The online commands end to end on a tiny model folder, a Python reward and a small prompt file."""

from __future__ import annotations

import json

import pytest
import torch

from preftune.cli import main
from preftune.runs import read_metrics

FIXTURE_PROMPTS = "tests/fixtures/data/pairs.jsonl"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, chatml_tokenizer):
    from preftune.models.loading import tiny_model

    root = tmp_path_factory.mktemp("online")
    model = tiny_model(len(chatml_tokenizer), seed=0)
    model.save_pretrained(root / "model")
    chatml_tokenizer.save_pretrained(root / "model")
    (root / "rew.py").write_text("def vowels(prompt, response):\n    return sum(c in 'aeo' for c in response) / max(len(response), 1)\n")
    return root


def _args(setup, command, out, *extra):
    return [command, "--model", str(setup / "model"), "--reward", f"{setup / 'rew.py'}:vowels", "--prompts",
            FIXTURE_PROMPTS, "--max-new-tokens", "6", "--batch-size", "2", "--output-dir", str(out), *extra]


@pytest.mark.parametrize("command", ["ppo", "rloo", "grpo", "reinforce"])
def test_online_commands_train_and_save(setup, tmp_path, command):
    out = tmp_path / command
    assert main(_args(setup, command, out, "--steps", "2", "--learning-rate", "1e-3", "--sample-every", "1")) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"reward_mean", "reward_std", "kl", "entropy", "response_length", "clip_frac"} <= set(rows[-1])
    assert (out / "final" / "config.json").exists()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "prompt", "response", "reward"} <= set(samples[0])
    assert "| prompt | response | reward |" in (out / "samples.md").read_text()
    if command == "ppo":
        assert (out / "final" / "value_head.safetensors").exists()


def test_cli_resume_matches_uninterrupted(setup, tmp_path):
    common = ("--learning-rate", "1e-3", "--sample-every", "0", "--num-samples", "2")
    assert main(_args(setup, "rloo", tmp_path / "full", "--steps", "3", "--save-every", "1", *common)) == 0
    # a run that stopped after step 1 (its checkpoint) and is resumed with --resume
    assert main(_args(setup, "rloo", tmp_path / "part", "--steps", "3", "--save-every", "1", *common)) == 0
    import shutil

    for step in (2,):
        shutil.rmtree(tmp_path / "part" / "checkpoints" / f"step-{step}")
    assert main(_args(setup, "rloo", tmp_path / "part", "--steps", "3", "--save-every", "1", "--resume", "latest", *common)) == 0
    from preftune.rl.loop import TIMING_METRICS as volatile
    strip = lambda rows: [{k: v for k, v in r.items() if k not in volatile} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "part")) == strip(read_metrics(tmp_path / "full"))


def test_best_of_n_and_rejection_sampling(setup, tmp_path):
    out = tmp_path / "bon.jsonl"
    assert main(["best-of-n", "--model", str(setup / "model"), "--reward", f"{setup / 'rew.py'}:vowels", "--prompts",
                 FIXTURE_PROMPTS, "--n", "3", "--max-new-tokens", "6", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        assert len(row["rewards"]) == 3 and row["best_reward"] == max(row["rewards"])
        assert row["response"] == row["responses"][row["rewards"].index(row["best_reward"])]
    run = tmp_path / "rs"
    assert main(["rejection-sampling", "--model", str(setup / "model"), "--reward", f"{setup / 'rew.py'}:vowels",
                 "--prompts", FIXTURE_PROMPTS, "--n", "2", "--max-new-tokens", "6", "--output-dir", str(run),
                 "--learning-rate", "1e-3"]) == 0
    assert (run / "best_of_n.jsonl").exists() and (run / "final" / "config.json").exists()
    assert read_metrics(run)[-1]["loss"] > 0


def test_config_errors(setup, tmp_path, capsys):
    assert main(["grpo", "--model", "x", "--reward", "m:f", "--num-samples", "1"]) == 2
    assert "GRPO needs num_samples >= 2 (group-normalised advantages)" in capsys.readouterr().err
    assert main(["ppo", "--reward", "m:f", "--kl-coeff", "0.1"]) == 2
    assert "unknown option 'kl_coeff'; did you mean 'kl_coef'?" in capsys.readouterr().err
    assert main(["ppo", "--reward", "m:f", "--ptx-coef", "0.5"]) == 2
    assert "ptx_coef > 0 needs --ptx-data" in capsys.readouterr().err
    assert main(["rloo", "--model", str(setup / "model"), "--reward", "no_such_module_x:f", "--prompts", FIXTURE_PROMPTS,
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert "cannot import module 'no_such_module_x'" in capsys.readouterr().err


def _rejection_sampling(setup, out, batch_size):
    # greedy, one prompt per decode batch: a prompt's samples are the same whichever process decodes it
    prompts = out.parent / "prompts.jsonl"
    return main(["rejection-sampling", "--model", str(setup / "model"), "--reward", f"{setup / 'rew.py'}:vowels",
                 "--prompts", str(prompts), "--n", "2", "--temperature", "0", "--gen-batch-size", "1",
                 "--max-new-tokens", "6", "--output-dir", str(out), "--sft-batch-size", str(batch_size),
                 "--learning-rate", "1e-3", "--seed", "3"])


def _run_rejection_sampling(setup, out):
    assert _rejection_sampling(setup, out, 2) == 0


def test_rejection_sampling_on_two_processes_equals_one(setup, tmp_path):
    """Each process samples its share of the prompts; gathered, the best-of-N file equals a one-process run's, and
    the SFT on it (2 processes x 2 examples against 1 x 4) ends with the same weights."""
    from safetensors.torch import load_file

    from tests.conftest import launch_processes

    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?"}) + "\n" for i in range(8)))
    assert _rejection_sampling(setup, tmp_path / "one", 4) == 0
    launch_processes(_run_rejection_sampling, 2, setup, tmp_path / "two")
    one, two = ((tmp_path / name / "best_of_n.jsonl").read_text() for name in ("one", "two"))
    assert two == one and len(one.splitlines()) == 8
    w1, w2 = (load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("one", "two"))
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=0)
    assert [r["step"] for r in read_metrics(tmp_path / "two")] == [r["step"] for r in read_metrics(tmp_path / "one")]
