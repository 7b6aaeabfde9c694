"""``--accelerate-config`` / ``--num-processes``: the shipped accelerate configs parse with accelerate's own loader and
launcher checks, the re-launch command line is exactly the expected one, and ``preftune sft --num-processes 2`` on CPUs
(relaunched through ``accelerate launch``) trains as one process does at the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from preftune.cli import main
from preftune.distributed import (
    ACCELERATE_CONFIGS,
    accelerate_config_names,
    launch_command,
    launch_requested,
    without_launch_flags,
)
from preftune.errors import PreftuneError

SHIPPED = ["ddp", "fsdp", "fsdp-offload", "multi-node", "single-gpu", "zero2", "zero3"]

# name -> (accelerate's distributed_type, what `accelerate launch` makes of the file: attribute -> value)
EXPECTED = {
    "single-gpu": ("NO", {"multi_gpu": False, "use_fsdp": False, "use_deepspeed": False, "num_processes": 1}),
    "ddp": ("MULTI_GPU", {"multi_gpu": True, "use_fsdp": False, "use_deepspeed": False, "num_machines": 1}),
    "fsdp": (
        "FSDP",
        {
            "use_fsdp": True,
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": True,
            "fsdp_offload_params": False,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
        },
    ),
    "fsdp-offload": (
        "FSDP",
        {
            "use_fsdp": True,
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": True,
            "fsdp_offload_params": True,
            "fsdp_cpu_ram_efficient_loading": True,
        },
    ),
    "zero2": ("DEEPSPEED", {"use_deepspeed": True, "zero_stage": 2, "offload_optimizer_device": "none"}),
    "zero3": ("DEEPSPEED", {"use_deepspeed": True, "zero_stage": 3, "zero3_init_flag": True, "zero3_save_16bit_model": True}),
    "multi-node": ("MULTI_GPU", {"multi_gpu": True, "num_machines": 2, "machine_rank": 0, "main_process_port": 29500}),
}


def test_the_shipped_configs_are_these():
    assert accelerate_config_names() == SHIPPED == sorted(EXPECTED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_parses_with_accelerates_loader_and_launcher(name):
    # accelerate's own reader (unknown top-level keys are errors there), then the checks `accelerate launch` runs before
    # it starts anything, which copy fsdp_config / deepspeed_config into the launcher's options. The GPU-only engines
    # (FSDP, DeepSpeed) are checked this far only: accelerate 1.16 runs FSDP on accelerator devices only (it stays DDP on
    # CPU processes) and DeepSpeed is not installed here.
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    kind, settings = EXPECTED[name]
    assert load_config_from_file(str(path)).distributed_type.value == kind
    parser = launch_command_parser()
    count = [] if name == "single-gpu" else ["--num_processes", "2"]  # the others leave it to --num-processes
    args = parser.parse_args(["--config_file", str(path), *count, "-m", "preftune.cli", "sft"])
    options = {action.dest for action in parser._actions}
    import yaml

    nested = yaml.safe_load(path.read_text())
    for key in {**nested.get("fsdp_config", {}), **nested.get("deepspeed_config", {})}:
        assert key in options, f"{name}.yaml: '{key}' is no option of accelerate launch"
    args, _, _ = _validate_launch_command(args)
    assert {k: getattr(args, k) for k in settings} == settings


def _accelerate_launch(config: str, *rest: str) -> list[str]:
    """The expected command line: accelerate's launcher with a shipped config, then ``rest``."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config), *rest]


def test_the_relaunch_command_line():
    argv = ["sft", "--model", "m", "--accelerate-config", "fsdp", "--max-steps", "2", "--num-processes=4", "--lora"]
    assert without_launch_flags(argv) == ["sft", "--model", "m", "--max-steps", "2", "--lora"]
    assert launch_command(argv, "fsdp", 4) == _accelerate_launch(
        "fsdp.yaml", *"--num_processes 4 -m preftune.cli sft --model m --max-steps 2 --lora".split()
    )
    # --num-processes alone: the ddp config
    assert launch_command(["dpo", "--num-processes", "2", "--beta", "0.2"], None, 2) == _accelerate_launch(
        "ddp.yaml", *"--num_processes 2 -m preftune.cli dpo --beta 0.2".split()
    )
    # a config that sets its process count keeps it
    assert launch_command(["grpo", "--accelerate-config", "single-gpu"], "single-gpu", None) == _accelerate_launch(
        "single-gpu.yaml", "-m", "preftune.cli", "grpo"
    )


def test_a_config_file_path_and_bad_names(tmp_path):
    own = tmp_path / "my-nodes.yaml"
    own.write_text((ACCELERATE_CONFIGS / "multi-node.yaml").read_text().replace("MAIN_MACHINE_IP", "10.1.2.3"))
    assert launch_command(["ppo", "--accelerate-config", str(own)], str(own), 16)[3:7] == [
        "--config_file",
        str(own),
        "--num_processes",
        "16",
    ]
    with pytest.raises(PreftuneError) as err:
        launch_command(["sft"], "multi-node", 16)
    assert str(err.value) == (
        f"--accelerate-config {ACCELERATE_CONFIGS / 'multi-node.yaml'}: main_process_ip is still the "
        "placeholder MAIN_MACHINE_IP; copy the file, set main_process_ip and machine_rank for each "
        "machine, and pass the copy's path"
    )
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(PreftuneError) as err:
            launch_command(["sft"], "zero3", None)
        assert str(err.value) == (
            "--accelerate-config zero3: give --num-processes N (no GPU to count here, and zero3.yaml sets no num_processes)"
        )


def test_an_unknown_config_name_lists_the_shipped_ones(tiny_lm, tmp_path, capsys):
    assert main(["sft", "--model", str(tiny_lm), "--output-dir", str(tmp_path), "--accelerate-config", "fsdp3"]) == 2
    assert capsys.readouterr().err == (
        "preftune sft: error: --accelerate-config fsdp3: neither a file nor a shipped config "
        "(ddp, fsdp, fsdp-offload, multi-node, single-gpu, zero2, zero3)\n"
    )
    assert not (tmp_path / "config.yaml").exists()  # nothing ran


def test_every_training_command_takes_the_launch_and_hub_flags():
    from preftune.cli import COMMANDS
    from preftune.config import parse_args
    import importlib

    flags = ["--accelerate-config", "ddp", "--num-processes", "2", "--push-to-hub", "me/m", "--hub-private"]
    online = ("ppo", "rloo", "grpo", "reinforce", "rejection-sampling")
    for name in ("sft", "dpo", "reward", *online):
        module, attr = COMMANDS[name][0].split(":")
        command = getattr(importlib.import_module(module), attr)
        extra = ["--reward", "m:f"] if name in online else []
        config = parse_args(command, extra + flags)
        launch = (config.accelerate_config, config.num_processes, config.push_to_hub, config.hub_private)
        assert launch == ("ddp", 2, "me/m", True), name


def test_the_cli_relaunches_once(monkeypatch, tiny_lm, tmp_path):
    seen = []

    def fake_run(command, env):
        seen.append((command, env.get("PREFTUNE_LAUNCHED")))
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "PREFTUNE_LAUNCHED"):
        monkeypatch.delenv(name, raising=False)
    argv = ["dpo", "--model", str(tiny_lm), "--output-dir", str(tmp_path), "--num-processes", "2", "--online", "--reward", "m:f"]
    assert main(argv) == 3  # the launch's exit status
    launched_as = ["dpo", "--model", str(tiny_lm), "--output-dir", str(tmp_path), "--online", "--reward", "m:f"]
    assert seen == [(_accelerate_launch("ddp.yaml", "--num_processes", "2", "-m", "preftune.cli", *launched_as), "1")]
    # in the launched processes the same flags are read again and ignored
    from preftune.commands.offline import DPO
    from preftune.config import parse_args

    config = parse_args(DPO, argv[1:])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("PREFTUNE_LAUNCHED", "1")
    assert launch_requested(config) is False
    monkeypatch.delenv("PREFTUNE_LAUNCHED")  # torchrun's or accelerate's own launch
    assert launch_requested(config) is False
    monkeypatch.setenv("WORLD_SIZE", "4")  # launched otherwise, as another count: said, not ignored
    with pytest.raises(PreftuneError) as err:
        launch_requested(config)
    assert str(err.value) == (
        "--num-processes 2: this process is already one of 4 launched processes (the launcher's "
        "environment); drop --num-processes, or launch that many"
    )
    monkeypatch.delenv("WORLD_SIZE")
    assert launch_requested(config) is True


def test_a_pipeline_stage_relaunches(monkeypatch, tmp_path):
    from preftune.pipeline import load_recipe, run_recipe

    seen = []
    monkeypatch.setattr(subprocess, "run", lambda command, env: seen.append(command) or subprocess.CompletedProcess(command, 0))
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "PREFTUNE_LAUNCHED"):
        monkeypatch.delenv(name, raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"output_dir: {tmp_path}/runs\nstages:\n  sft:\n    command: sft\n"
        "    options: {model: m, max_steps: 2, accelerate_config: zero2, num_processes: 4}\n"
    )
    run_recipe(load_recipe(str(recipe)))
    assert seen == [
        _accelerate_launch(
            "zero2.yaml",
            *"--num_processes 4 -m preftune.cli sft --model m --max-steps 2 --output-dir".split(),
            f"{tmp_path}/runs/sft",
        )
    ]


def _pairs(root):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."} for i in range(16)]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_num_processes_2_trains_as_one_process(tiny_lm, tmp_path, monkeypatch):
    # the same runs as tests/test_distributed.py's SFT (4 examples a step), but started as a user starts it:
    # `preftune sft --num-processes 2`, which re-launches itself through `accelerate launch` (ddp.yaml; gloo on CPUs)
    from tests.test_distributed import _argv, _final_weights
    from preftune.runs import read_metrics

    data = _pairs(tmp_path)
    assert main(_argv("sft", tiny_lm, data, tmp_path / "one", 4, 1)) == 0
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "PREFTUNE_LAUNCHED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert main(_argv("sft", tiny_lm, data, tmp_path / "two", 2, 1) + ["--num-processes", "2"]) == 0
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]  # the main process alone logs
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-6)
    a, b = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
