"""Where this process stands in a multi-process launch (torchrun, ``accelerate launch``, mpirun), read from the
launcher's environment, so that modules below the trainers (run folders) can act once per run without an
``Accelerator`` at hand; and how a command starts such a launch itself (``--accelerate-config`` / ``--num-processes``)
through ``accelerate launch``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from preftune.errors import PreftuneError

_WORLD = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def world_size() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return _first_int(_WORLD, 1)


def rank() -> int:
    """This process's global index (0 without a launcher)."""
    return _first_int(_RANK, 0)


def is_main_process() -> bool:
    """Whether this process writes the run's files (config, metrics, final model): global rank 0."""
    return rank() == 0


# -- starting a launch: the shipped accelerate configs and `--accelerate-config` / `--num-processes` -----------------

#: accelerate config files shipped with preftune (``--accelerate-config NAME``); docs/scaling.md says which to use when
ACCELERATE_CONFIGS = Path(__file__).parent / "recipes" / "accelerate"

#: set in the environment of a launch that preftune started, so that a launcher which sets no WORLD_SIZE (accelerate's
#: single-process launcher) does not make the command launch itself again
LAUNCHED_ENV = "PREFTUNE_LAUNCHED"

#: the flags that ask for a launch; they are taken out of the relaunched command line
LAUNCH_FLAGS = ("--accelerate-config", "--num-processes")

# a multi-node config's placeholder address, which the user replaces in a copy of multi-node.yaml
_PLACEHOLDER_IP = "MAIN_MACHINE_IP"


def launched() -> bool:
    """Whether this process already runs under a launcher (torchrun, ``accelerate launch``, mpirun, or preftune's)."""
    return bool(os.environ.get(LAUNCHED_ENV) or os.environ.get("LOCAL_RANK") or any(os.environ.get(n) for n in _WORLD))


def launch_requested(config: object) -> bool:
    """Whether a command's config asks for a launch (``--accelerate-config`` or ``--num-processes``) that has not
    happened yet: in the launched processes the same options are read again and ignored (a process count that
disagrees with the launch is an error rather than silently ignored)."""
    count = getattr(config, "num_processes", None)
    if launched():
        if count is not None and count != world_size():
            raise PreftuneError(f"--num-processes {count}: this process is already one of {world_size()} launched "
                                "processes (the launcher's environment); drop --num-processes, or launch that many")
        return False
    return bool(getattr(config, "accelerate_config", None) or count)


def accelerate_config_names() -> list[str]:
    """The names of the shipped accelerate configs, sorted."""
    return sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))


def accelerate_config_path(name_or_path: str) -> Path:
    """``--accelerate-config``: the path of an accelerate config file, or the name of a shipped one (``fsdp``)."""
    from preftune.config import file_or_shipped

    path = file_or_shipped(name_or_path, ACCELERATE_CONFIGS)
    if path is not None:
        return path
    raise PreftuneError(f"--accelerate-config {name_or_path}: neither a file nor a shipped config "
                        f"({', '.join(accelerate_config_names())})")


def without_launch_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--accelerate-config X`` and ``--num-processes N`` (either also written ``--flag=value``)."""
    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in LAUNCH_FLAGS:
            skip = True
        elif not token.startswith(tuple(f"{f}=" for f in LAUNCH_FLAGS)):
            out.append(token)
    return out


def launch_command(argv: Sequence[str], accelerate_config: str | None, num_processes: int | None) -> list[str]:
    """The command line that runs ``preftune ARGV`` under ``accelerate launch`` with a config file (a shipped name or a
    path; default ``ddp``) and a process count (default: the config's own, else one process per visible GPU).

    argv: the command's arguments after ``preftune`` (``["sft", "--model", ...]``); the launch flags are dropped."""
    import yaml

    config = accelerate_config_path(accelerate_config or "ddp")
    settings = yaml.safe_load(config.read_text()) or {}
    if str(settings.get("main_process_ip")) == _PLACEHOLDER_IP:
        raise PreftuneError(f"--accelerate-config {config}: main_process_ip is still the placeholder {_PLACEHOLDER_IP}; "
                            "copy the file, set main_process_ip and machine_rank for each machine, and pass the copy's path")
    if num_processes is None and settings.get("num_processes", -1) == -1:
        import torch

        if not torch.cuda.is_available():
            raise PreftuneError(f"--accelerate-config {accelerate_config}: give --num-processes N (no GPU to count here, "
                                f"and {config.name} sets no num_processes)")
        num_processes = torch.cuda.device_count()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if num_processes is not None:
        command += ["--num_processes", str(num_processes)]
    return command + ["-m", "preftune.cli", *without_launch_flags(argv)]


def relaunch(argv: Sequence[str], accelerate_config: str | None, num_processes: int | None) -> int:
    """Run ``preftune ARGV`` under ``accelerate launch`` (see :func:`launch_command`) and return its exit status."""
    import shlex
    import subprocess

    command = launch_command(argv, accelerate_config, num_processes)
    print("preftune: launching " + shlex.join(command), file=sys.stderr, flush=True)
    return subprocess.run(command, env={**os.environ, LAUNCHED_ENV: "1"}).returncode
