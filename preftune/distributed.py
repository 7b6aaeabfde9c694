"""Where this process stands in a multi-process launch (torchrun, ``accelerate launch``, mpirun), read from the
launcher's environment, so that modules below the trainers (run folders) can act once per run without an
``Accelerator`` at hand."""

from __future__ import annotations

import os

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
