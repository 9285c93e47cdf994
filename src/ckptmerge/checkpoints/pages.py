"""Page-level control of memory-mapped checkpoint tensors: fault them in ahead of use, drop them after.

A tensor viewed through a file mapping costs no anonymous memory, but every page the process touches
stays mapped (and counts in its resident set) until it is unmapped. A streaming merge over a 14 GB
checkpoint would therefore end with 14 GB "resident" although none of it is needed any more. The
engine calls :func:`populate` on the pages it is about to read (a reader thread, so the page faults
and any disk reads overlap the arithmetic) and :func:`release` once they are merged; the data stays in
the kernel's page cache, only our page-table entries go.

Only ever call these on tensors that view a *file* mapping (``CheckpointReader.get`` returns such
views): ``MADV_DONTNEED`` on anonymous memory would zero it. :func:`is_file_mapped` is the guard.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_MADV_WILLNEED = 3
_MADV_DONTNEED = 4
_MADV_POPULATE_READ = 22  # Linux >= 5.14: fault the range in, synchronously, without touching it from Python

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _libc = None
_populate_ok = _libc is not None

# Address ranges [start, end) of file mappings that readers registered; release() refuses anything else.
_FILE_RANGES: list[tuple[int, int]] = []


def register_file_range(start: int, length: int) -> None:
    """Record that ``[start, start + length)`` is a read-only-in-practice file mapping."""
    if length > 0:
        _FILE_RANGES.append((start, start + length))


def unregister_file_ranges(starts: list[int]) -> None:
    """Forget the ranges that begin at ``starts`` (their owner is about to drop the maps); empties ``starts``."""
    gone = set(starts)
    _FILE_RANGES[:] = [r for r in _FILE_RANGES if r[0] not in gone]
    starts.clear()


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Page-aligned [start, end) covering ``t``'s bytes (it is contiguous: a slice of a flat view)."""
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    return start - start % PAGE, -(-end // PAGE) * PAGE


def is_file_mapped(t: torch.Tensor) -> bool:
    """Whether ``t`` lies inside a registered file mapping (so dropping its pages cannot lose data)."""
    if t.device.type != "cpu" or t.numel() == 0:
        return False
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    return any(s <= start and end <= e for s, e in _FILE_RANGES)


def _madvise(t: torch.Tensor, advice: int) -> bool:
    if _libc is None:
        return False
    start, end = _span(t)
    # The outer page-aligned span: a page shared with a neighbouring tensor is merely faulted in again
    # from the page cache if the neighbour still needs it. ctypes releases the GIL around the call.
    return _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), advice) == 0


def populate(tensors: Iterable[torch.Tensor]) -> None:
    """Fault the pages of file-mapped ``tensors`` in now (reads from disk if they are not cached)."""
    global _populate_ok
    for t in tensors:
        if not is_file_mapped(t):
            continue
        if _populate_ok and _madvise(t, _MADV_POPULATE_READ):
            continue
        if _populate_ok and ctypes.get_errno() == 22:  # EINVAL: kernel older than 5.14
            _populate_ok = False
            log.debug("MADV_POPULATE_READ unsupported; touching pages instead")
        _madvise(t, _MADV_WILLNEED)
        # Touch one byte per page: the fault reads it (and its neighbours) into the mapping.
        flat = t.reshape(-1).view(torch.uint8)
        if flat.numel():
            int(flat[::PAGE].sum())


def release(tensors: Iterable[torch.Tensor]) -> None:
    """Drop the pages of file-mapped ``tensors`` from this process (the page cache keeps the data)."""
    for t in tensors:
        if is_file_mapped(t):
            _madvise(t, _MADV_DONTNEED)


_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)


def return_freed_tensors_at_once(threshold: int = 128 << 10) -> bool:
    """Have glibc map every allocation above ``threshold`` bytes on its own, so that freeing it returns it.

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB) and
    its heap trim threshold to twice that: after the first few tensors, medium ones come from the heap
    and, freed, stay in the process's resident set. A merge whose sources are read into memory (ZeRO, DCP)
    frees one tensor after another, so that kept memory grew with the model: peak RSS over three model
    widths fitted 2.5-2.9x the largest tensor (benchmarks/native_memory.py --sizes), about 2x with the
    threshold pinned. Pinning it also turns glibc's dynamic adjustment off for the rest of the process:
    meant for a one-shot process (``action=merge``), not a search's evaluations. False where not glibc.
    """
    if _libc is None or not hasattr(_libc, "mallopt"):
        return False
    return bool(_libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process, from /proc (0, 0 where unavailable)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        kb = lambda k: int(fields[k].split()[0]) * 1024  # noqa: E731
        return kb("VmRSS"), kb("VmHWM")
    except (OSError, KeyError, ValueError):
        return 0, 0


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
