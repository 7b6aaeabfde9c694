"""Two processes (gloo on CPU) against one at the same global batch: SFT, DPO and reward training give the same
losses and weights, and only the main process writes the run folder."""

from __future__ import annotations

import json

import pytest
import torch

from preftune.cli import main
from preftune.runs import read_metrics
from tests.conftest import launch_processes

STEPS = 3


def _pairs(root):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
            for i in range(16)]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# per method: (1 process: batch size, grad accum), (2 processes: batch size, grad accum): 4 examples a step either way
LAYOUTS = {"sft": ((4, 1), (2, 1)), "dpo": ((4, 1), (1, 2)), "reward": ((2, 2), (2, 1))}


def _argv(method, model, data, out, batch, accum):
    return [method, "--model", str(model), "--data", str(data), "--output-dir", str(out), "--batch-size", str(batch),
            "--grad-accum", str(accum), "--max-steps", str(STEPS), "--learning-rate", "1e-3", "--lr-scheduler",
            "constant", "--warmup", "0", "--seed", "3"]


def _run_all(argvs):
    for argv in argvs:
        assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_lm):
    root = tmp_path_factory.mktemp("distributed")
    data = _pairs(root)
    for method, (one, _) in LAYOUTS.items():
        assert main(_argv(method, tiny_lm, data, root / f"{method}-1", *one)) == 0
    # the 2-process runs also leave checkpoints (a 1-process run resumes them below)
    launch_processes(_run_all, 2, [_argv(method, tiny_lm, data, root / f"{method}-2", *two) + ["--save-every", "1"]
                                   for method, (_, two) in LAYOUTS.items()])
    return root


def _final_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((folder / "final").glob("*.safetensors"))
    assert files, f"no weights in {folder / 'final'}"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("method", list(LAYOUTS))
def test_two_processes_train_as_one(runs, tiny_lm, method):
    one, two = read_metrics(runs / f"{method}-1"), read_metrics(runs / f"{method}-2")
    # the main process alone logs: one row per step, not one per process
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, STEPS + 1))
    # the loss is normalised by the global count (tokens, pairs) across processes, as one process does
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-6)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-5)
    a, b = _final_weights(runs / f"{method}-1"), _final_weights(runs / f"{method}-2")
    assert a.keys() == b.keys()
    # a wrong normalisation or a rank training alone moves weights by ~lr (1e-3) a step; summation order: < 1e-6
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    import yaml  # the precision policy, recorded once in the run's config

    config = yaml.safe_load((runs / f"{method}-2" / "config.yaml").read_text())
    assert config["precision"] == {"master_weights": "float32", "autocast": "no", "device": "cpu"}
    if method != "reward":  # and the weights did move (by ~lr a step), so the comparison above means something
        from safetensors.torch import load_file

        start = load_file(str(next(tiny_lm.glob("*.safetensors"))))
        assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3


def _fsdp_sft(argv, report):
    import os

    from preftune.train.loop import make_accelerator

    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    kind = str(make_accelerator("no").distributed_type)
    if kind.endswith("FSDP"):
        assert main(argv) == 0
    if int(os.environ["RANK"]) == 0:
        report.write_text(kind)


def test_fsdp_on_two_cpu_processes_trains_as_one(runs, tiny_lm, tmp_path):
    # torch 2.13's FSDP2 (fully_shard) itself runs on CPUs with gloo (measured: 2 processes, forward and backward of
    # a tiny Llama), but accelerate 1.16 turns FSDP on only for GPU-like device types (AcceleratorState.__init__ checks
    # MULTI_GPU, MULTI_XPU, ... and not MULTI_CPU): on CPUs ACCELERATE_USE_FSDP is ignored and the run is DDP. The test
    # trains when accelerate sets FSDP up, and is skipped, naming what accelerate chose, where it does not.
    report = tmp_path / "kind.txt"
    launch_processes(_fsdp_sft, 2, _argv("sft", tiny_lm, runs / "pairs.jsonl", tmp_path / "sft-fsdp", *LAYOUTS["sft"][1]),
                     report)
    kind = report.read_text()
    if not kind.endswith("FSDP"):
        pytest.skip(f"accelerate sets up {kind} instead of FSDP on CPU processes (ACCELERATE_USE_FSDP=true ignored)")
    one, two = read_metrics(runs / "sft-1"), read_metrics(tmp_path / "sft-fsdp")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-6)
    a, b = _final_weights(runs / "sft-1"), _final_weights(tmp_path / "sft-fsdp")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_a_two_process_checkpoint_resumes_in_one_process(runs, tiny_lm, tmp_path, method):
    import shutil

    folder = tmp_path / method
    shutil.copytree(runs / f"{method}-2", folder)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-1", "step-2"]
    # DPO: the reference log-probs were precomputed per process; the one process needs both files
    if method == "dpo":
        assert sorted(p.name for p in folder.glob("ref_logps-*.pt")) == ["ref_logps-0.pt", "ref_logps-1.pt"]
    one = LAYOUTS[method][0]
    checkpoint = folder / "checkpoints" / "step-1"
    assert main(_argv(method, tiny_lm, runs / "pairs.jsonl", folder, *one) + ["--resume", str(checkpoint)]) == 0
    resumed, straight = read_metrics(folder), read_metrics(runs / f"{method}-1")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], abs=1e-6)
    a, b = _final_weights(runs / f"{method}-1"), _final_weights(folder)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_resume_with_another_global_batch_is_refused(runs, tiny_lm, tmp_path, capsys):
    import shutil

    folder = tmp_path / "sft"
    shutil.copytree(runs / "sft-2", folder)
    checkpoint = folder / "checkpoints" / "step-1"
    assert main(_argv("sft", tiny_lm, runs / "pairs.jsonl", folder, 2, 1) + ["--resume", str(checkpoint)]) != 0
    assert (f"--resume: {checkpoint} was written by 2 processes with a global batch of 4 (4 steps an epoch); this run "
            "has 1 with 2 (8 steps an epoch): resume with batch_size × grad_accum × processes equal to the checkpoint's"
            in capsys.readouterr().err)
