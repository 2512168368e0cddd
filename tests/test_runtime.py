"""Process-level settings from `nmt_cli.runtime`."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A decoding-like pattern: a cache one position (4 MB) longer each step, copied from the
# last one, and a step's 32 MB of scores; prints the page faults of the last 20 steps.
FAULTS = """
import resource, sys, torch
from nmt_cli.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
cache = torch.ones(2**20)
for step in range(24):
    if step == 4:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    grown = torch.empty((step + 2) * 2**20)
    grown[: cache.numel()] = cache
    grown[cache.numel() :] = 1.0
    scores = torch.ones(8 * 2**20)
    del cache, scores
    cache = grown
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_saves_most_page_faults() -> None:
    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    default, kept = faults("default"), faults("keep")
    assert default > 20 * 4 * 2**20 // 4096  # without: at least the new position's pages
    assert kept < default / 4  # measured: 481,320 against 60,416-78,848
