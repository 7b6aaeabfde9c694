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
print(applied, sum(faults() for _ in range(8)) // 8)  # mean faults per pass of 5 blocks
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
    # a pass of 5 x 64 MB blocks is 80k pages faulted anew when the blocks go back to the kernel; kept, a block
    # is only now and then placed on fresh pages (measured means over 8 passes: 0 or 6k)
    assert faults < 30_000  # mean per pass; 81,920 without


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_opt_out_leaves_malloc_alone():
    applied, faults = _probe("0")
    assert not applied
    assert faults > 60_000  # each 64 MB block is mmap'd and faulted in anew (81,920 pages a pass)
