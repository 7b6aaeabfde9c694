"""Exact resume and gradient accumulation of the offline loop, through `preftune dpo` / `preftune sft` on a tiny model."""

from __future__ import annotations

import json

import pytest

from preftune.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from preftune.models.loading import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("offline")
    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."} for i in range(16)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _args(setup, command, out, *extra):
    return [command, "--model", str(setup / "model"), "--data", str(setup / "pairs.jsonl"), "--output-dir", str(out),
            "--batch-size", "2", "--learning-rate", "1e-3", "--lr-scheduler", "constant", "--warmup", "0", *extra]


@pytest.mark.parametrize("command,extra", [("dpo", ["--ref", "copy"]), ("sft", [])])
def test_resume_gives_the_uninterrupted_curve(setup, tmp_path, command, extra):
    # A different --max-steps on resume stands for "the run was cut short"; precomputed reference log-probs
    # cover only the planned steps (a resume past them is refused with a message), so the reference is a copy here.
    assert main(_args(setup, command, tmp_path / "straight", "--max-steps", "6", *extra)) == 0
    # An interrupted run: it stopped after step 3 (the newest checkpoint, step 2, is where it resumes).
    assert main(_args(setup, command, tmp_path / "parts", "--max-steps", "3", "--save-every", "1", *extra)) == 0
    assert main(_args(setup, command, tmp_path / "parts", "--max-steps", "6", "--resume", *extra)) == 0
    straight, parts = _losses(tmp_path / "straight"), _losses(tmp_path / "parts")
    assert len(straight) == len(parts) == 6
    assert parts == pytest.approx(straight, abs=1e-6)


def test_gradient_accumulation_equals_a_larger_batch(setup, tmp_path):
    from safetensors.torch import load_file

    # in fp32 on any device: under bf16 autocast (the default on a GPU) the two summation orders round differently,
    # and Adam's first step turns any sign flip of a near-zero gradient into a 2 x lr difference of that weight
    fp32 = ("--mixed-precision", "no")
    assert main(_args(setup, "dpo", tmp_path / "big", "--max-steps", "1", "--batch-size", "4", *fp32)) == 0
    assert main(_args(setup, "dpo", tmp_path / "accum", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "2", *fp32)) == 0
    assert _losses(tmp_path / "big") == pytest.approx(_losses(tmp_path / "accum"), abs=1e-6)
    big = load_file(str(next((tmp_path / "big" / "final").glob("*.safetensors"))))
    acc = load_file(str(next((tmp_path / "accum" / "final").glob("*.safetensors"))))
    assert big.keys() == acc.keys()
    # a wrong accumulation moves weights by ~lr (1e-3); summation order alone: under 1e-6 on a CPU, 2e-6 on a GPU in fp32
    assert max((big[k] - acc[k]).abs().max().item() for k in big) < 1e-5


def test_runs_with_different_mixed_precision_in_one_process():
    # accelerate's state is process-wide: a second Accelerator with another mixed precision raised "AcceleratorState
    # has already been initialized" (PPO's loop asks for none, an offline run on a GPU for bf16: the demo, a notebook)
    from preftune.train.loop import make_accelerator

    assert make_accelerator("no").mixed_precision == "no"
    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert make_accelerator("no").mixed_precision == "no"


def test_a_count_metric_is_summed_over_micro_batches_not_averaged(setup, tmp_path):
    # completion_tokens counts the step's trained tokens: the same 4 examples give the same count whether they come
    # as one micro-batch or two (the weighted mean gave Σt²/Σt, which changes with the micro-batch size)
    from preftune.train.loop import _weighted_mean

    assert _weighted_mean([(3.0, {"loss": 1.0, "completion_tokens": 3.0}), (1.0, {"loss": 5.0, "completion_tokens": 1.0})]) \
        == {"loss": 2.0, "completion_tokens": 4.0}
    assert main(_args(setup, "sft", tmp_path / "big", "--max-steps", "1", "--batch-size", "4")) == 0
    assert main(_args(setup, "sft", tmp_path / "accum", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "2")) == 0

    def counted(run):
        return [json.loads(line)["completion_tokens"] for line in (run / "metrics.jsonl").read_text().splitlines()][0]

    assert counted(tmp_path / "big") == counted(tmp_path / "accum") > 0
