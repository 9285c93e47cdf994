"""``pages.return_freed_tensors_at_once`` (set by ``action=merge`` over ZeRO and DCP checkpoints, whose tensors
are read into memory one after another): freed medium-sized tensors leave the resident set, where by default
glibc keeps them once a larger block has raised its thresholds (which made a merge's peak grow faster than
2x its largest tensor; benchmarks/native_memory.py --sizes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh process each: glibc's thresholds are process state.
_CODE = """
import sys, torch
from ckptmerge.checkpoints import pages
if sys.argv[1] == "pin":
    assert pages.return_freed_tensors_at_once()
big = torch.ones(30 << 18)  # 30 MiB, mapped on its own; freed, glibc raises its thresholds to its size
del big
base = pages.rss_bytes()[0]
ts = [torch.ones(1 << 20) for _ in range(12)]  # 12 x 4 MiB
del ts
print((pages.rss_bytes()[0] - base) / 2**20)
"""


def _kept_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CODE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_tensors_leave_the_resident_set() -> None:
    assert _kept_mib("default") > 24  # the allocator's default keeps most of the 48 MiB: the test can say no
    assert _kept_mib("pin") < 8
