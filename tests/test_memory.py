"""preftune.memory: glibc keeps freed memory for reuse (checked in fresh processes: the setting is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from preftune.memory import retain_freed_memory
applied = retain_freed_memory()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.empty(16 * 1024 * 1024)  # 64 MB: above glibc's largest mmap threshold (32 MB)
        x.fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(), faults()  # the first passes fault the pages in either way (and settle where the blocks sit)
print(applied, faults())
"""


def _probe(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "PREFTUNE_RETAIN_FREED_MEMORY"}
    if env_value is not None:
        env["PREFTUNE_RETAIN_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_memory_is_reused_without_page_faults():
    applied, faults = _probe(None)
    assert applied
    # 5 x 64 MB = 80k pages would fault again if the blocks went back to the kernel
    assert faults < 1000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_opt_out_leaves_malloc_alone():
    applied, faults = _probe("0")
    assert not applied
    assert faults > 40_000  # each 64 MB block is mmap'd and faulted in anew
