"""The streaming merge engine: reads, arithmetic and writes overlap, in bounded memory.

Three stages, joined by byte-bounded queues:

* a **reader thread** walks the output layout and, for each tensor (or each chunk of it, when the merge
  method is elementwise), takes zero-copy views of the sources' memory maps and faults their pages in
  (``pages.populate``: disk reads and page faults happen here, ahead of use), admitting at most
  ``prefetch_bytes`` of source data in flight;
* the **calling thread** runs the merge method on those views (pure math from ``ckptmerge.merge``,
  fp32 accumulation) and checks the result is finite, admitting at most ``write_bytes`` of output
  pending;
* a **writer thread** ``pwrite``\\ s each merged chunk at its final offset in its shard file, whose header
  was written up front (``layout.plan_shards``), then drops the chunk's source pages from the process
  (``pages.release``; the page cache keeps them).

Torch ops and the I/O syscalls release the GIL, so the stages run in parallel. Peak memory is the two
budgets plus one chunk of temporaries (plus, for a method that is not elementwise, its largest
tensor), whatever the model size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ckptmerge.checkpoints import pages
from ckptmerge.checkpoints.layout import Placement, Shard
from ckptmerge.checkpoints.reader import TensorReader, reads_into_memory
from ckptmerge.errors import CheckpointError

if TYPE_CHECKING:
    from ckptmerge.checkpoints.inline_checks import InlineChecks

log = logging.getLogger(__name__)

_DONE = object()
DEFAULT_CHUNK_ELEMS = 1 << 19  # 2 MB of fp32 temporaries: the merged chunk is still in cache when written
DEFAULT_PREFETCH_BYTES = 64 << 20
DEFAULT_WRITE_BYTES = 64 << 20


@dataclass
class StreamStats:
    """What one streaming merge did."""

    tensors: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    # Tensors whose non-finite values come from the sources themselves (e.g. a -inf attention mask
    # buffer stored in fp16), not from the merge; verification allows exactly these.
    inherited_nonfinite: list[str] = field(default_factory=list)


class _Budget:
    """A byte budget shared by two threads; one item larger than the whole budget is let through alone."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit, self.used, self.stop = max(1, limit), 0, stop
        self.cond = threading.Condition()

    def acquire(self, n: int) -> bool:
        with self.cond:
            while self.used > 0 and self.used + n > self.limit:
                if self.stop.is_set():
                    return False
                self.cond.wait(0.1)
            self.used += n
            return not self.stop.is_set()

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def all_finite(t: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN or Inf.

    A sum propagates NaN and Inf and costs one vectorised pass without allocating, ~40x cheaper than
    ``isfinite(t).all()`` on fp16; only when the sum is not finite (a NaN/Inf, or a finite overflow)
    is the exact check run.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def take_newest(parts: Sequence[torch.Tensor]) -> bool:
    """Whether a tensor is copied from the newest checkpoint instead of merged: integer and bool tensors
    (step counters, masks, token ids) cannot be averaged. The one rule for every merge method, for the
    streaming writer and for the resident model's trials alike (see ``content.check_dtypes``)."""
    return not parts[-1].is_floating_point()


def is_elementwise(merge_fn: Callable[..., Any]) -> bool:
    """Whether a merge method may be applied to matching flat chunks of its inputs (``fn.elementwise``)."""
    return bool(getattr(merge_fn, "elementwise", False))


def default_threads() -> int:
    """Torch threads for merge arithmetic: on a small machine one, leaving the other cores to the I/O stages.

    The arithmetic is memory-bound and runs as many small (cache-sized) ops; each op with several
    threads is an OpenMP parallel region whose barrier stalls whenever a thread is descheduled. On a
    busy 2-core machine that made a 1B-parameter merge take 14 s of CPU with 2 threads, 1.2 s with 1.
    """
    n = pages.cpu_count()
    return 1 if n <= 4 else min(8, n // 2)


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (default: :func:`default_threads`), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _BufferPool:
    """Output chunk buffers handed from the merge thread to the writer and back, so each chunk reuses
    memory that is already mapped instead of faulting a fresh allocation in (which cost more than
    the arithmetic). The write budget bounds how many are out at once."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.free: list[torch.Tensor] = []
        self.lock = threading.Lock()

    def take(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        need = numel * dtype.itemsize
        buf = None
        if need <= self.nbytes:
            with self.lock:
                buf = self.free.pop() if self.free else None
            if buf is None:
                buf = torch.empty(self.nbytes, dtype=torch.uint8)
        else:
            buf = torch.empty(need, dtype=torch.uint8)
        return buf[:need].view(dtype)

    def give(self, t: torch.Tensor) -> None:
        base = t._base if t._base is not None else t
        if base.numel() == self.nbytes and base.dtype == torch.uint8:
            with self.lock:
                self.free.append(base)


class MergeStream:
    """One streaming merge of ``sources`` into the planned ``shards`` inside ``folder``."""

    def __init__(
        self,
        sources: Sequence[TensorReader],
        weights: Sequence[float],
        merge_fn: Callable[..., torch.Tensor],
        shards: Sequence[Shard],
        folder: Path,
        *,
        chunk_elems: int = DEFAULT_CHUNK_ELEMS,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        write_bytes: int = DEFAULT_WRITE_BYTES,
        progress: Any = None,
        checks: InlineChecks | None = None,
    ) -> None:
        self.sources, self.weights, self.fn = list(sources), list(weights), merge_fn
        # The content checks of action=merge, fed by this stream's reads (each input is read once).
        self.checks = checks
        self.shards, self.folder = list(shards), Path(folder)
        self.elementwise = is_elementwise(merge_fn)
        self.chunk = max(1, int(chunk_elems))
        # An elementwise method with an in-place form merges into pooled buffers through fp32 scratch.
        self.into = getattr(merge_fn, "into", None) if self.elementwise else None
        self.pool = _BufferPool(self.chunk * 8)
        self.scratch = torch.empty(self.chunk, dtype=torch.float32) if self.into else None
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.inq: queue.Queue = queue.Queue()
        self.outq: queue.Queue = queue.Queue()
        self.read_budget = _Budget(prefetch_bytes, self.stop)
        self.write_budget = _Budget(write_bytes, self.stop)
        self.bar = progress
        self.stats = StreamStats()
        self._written: dict[str, int] = {}
        self._fds: list[int] = []
        self._total = sum(len(s.tensors) for s in self.shards)
        # Sources whose get() reads into memory rather than viewing a memory map (no byte ranges).
        self._in_memory = any(reads_into_memory(r) for r in self.sources)
        self._metas = [r.meta() for r in self.sources] if self._in_memory else []

    # -- failure handling ----------------------------------------------------------------------
    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        self.stop.set()

    def _get(self, q: queue.Queue) -> Any:
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _DONE

    # -- stage 1: reader -----------------------------------------------------------------------
    def _units(self, p: Placement) -> list[tuple[int, int]]:
        """Element ranges merged as one unit: chunks for an elementwise method, else the whole tensor."""
        if not self.elementwise or p.numel <= self.chunk:
            return [(0, p.numel)]
        return [(s, min(s + self.chunk, p.numel)) for s in range(0, p.numel, self.chunk)]

    def _read(self) -> None:
        # The content checks' sums run here: one torch thread, as the arithmetic (see default_threads).
        # A multi-threaded op on a busy machine stalls at its barrier: measured on the loaded 2-core VM,
        # a Pythia-1B merge's stream took 38-50 s with this thread's sums on 2 threads, against 9-10 s
        # for the merge without them.
        torch.set_num_threads(1)
        try:
            for shard in self.shards:
                for p in shard.tensors:
                    # A ZeRO or DCP source reads a tensor into memory on get(): admit its bytes before
                    # reading, not after, so that no second tensor is read while the budget is spent.
                    if self._in_memory and not self.read_budget.acquire(self._source_bytes(p.key)):
                        return
                    if not self._read_tensor(p):
                        return
            self.inq.put(_DONE)
        except BaseException as e:  # surfaces in the calling thread
            self._fail(e)

    def _read_tensor(self, p: Placement) -> bool:
        """Queue tensor ``p``'s merge units; False when the stream stopped meanwhile."""
        views = [r.get(p.key) for r in self.sources]  # the one read of this tensor from each source
        for r, v in zip(self.sources, views):
            if tuple(v.shape) != p.shape:
                raise CheckpointError(f"{r.folder}: tensor {p.key} has shape {list(v.shape)}, expected {list(p.shape)}")
        flats = [v.reshape(-1) for v in views]
        units = self._units(p)
        i = 0
        while i < len(units):
            # Units are faulted in a batch that covers whole digest chunks of the content checks, so
            # each chunk is summed while its pages are resident (before the writer drops them).
            j = i + 1
            if self.checks is not None:
                end = self.checks.span_end(units[i][1])
                while j < len(units) and units[j - 1][1] < end:
                    j += 1
            # An elementwise method sees flat 1-D chunks; any other method whole tensors.
            batch = [(s, e, [f[s:e] for f in flats] if self.elementwise else views) for s, e in units[i:j]]
            if self._in_memory:
                # A tensor read into memory is freed with its last unit (every unit is a view of it), so
                # its whole budget goes back then, not unit by unit: returned early, it let the reader
                # read up to the whole read budget of next tensors while this one (the largest, at the
                # peak) was still whole in memory.
                sizes = [0] * len(batch)
                if j == len(units):
                    sizes[-1] = self._source_bytes(p.key)
            else:
                sizes = [sum(x.numel() * x.element_size() for x in parts) for _, _, parts in batch]
                if not self.read_budget.acquire(sum(sizes)):
                    return False
            for _, _, parts in batch:
                pages.populate(parts)
            if self.checks is not None:
                self.checks.tensor(p.key, flats, batch[-1][1])
            for (s, e, parts), n in zip(batch, sizes):
                self.inq.put((p, s, e, parts, n))
            i = j
        return True

    def _source_bytes(self, key: str) -> int:
        return sum(m[key].nbytes for m in self._metas)

    # -- stage 2: arithmetic (calling thread) ----------------------------------------------------
    def _merge_unit(self, p: Placement, s: int, e: int, parts: list[torch.Tensor]) -> torch.Tensor:
        if take_newest(parts):
            out = parts[-1].clone()
        elif self.into is not None:
            out = self.pool.take(p.dtype, e - s)
            self.into(out, parts, self.weights, self.scratch)
        else:
            out = self.fn(parts, self.weights, p.dtype)
        if not isinstance(out, torch.Tensor):
            raise CheckpointError(f"merge method returned {type(out).__name__} for tensor {p.key}, not a tensor")
        if out.numel() != e - s or (not self.elementwise and tuple(out.shape) != p.shape):
            raise CheckpointError(
                f"merge method returned shape {list(out.shape)} for tensor {p.key}, expected {list(p.shape)}"
            )
        out = out.to(device="cpu", dtype=p.dtype).reshape(-1).contiguous()
        if not all_finite(out):
            if not self._inherited(out, parts):
                raise CheckpointError(f"the merge of tensor {p.key} contains NaN or Inf; nothing was written")
            if p.key not in self.stats.inherited_nonfinite:
                self.stats.inherited_nonfinite.append(p.key)
        return out

    @staticmethod
    def _inherited(out: torch.Tensor, parts: list[torch.Tensor]) -> bool:
        """Every non-finite output value sits where some source is non-finite already."""
        src_bad = torch.zeros(out.numel(), dtype=torch.bool)
        for t in parts:
            if t.is_floating_point():
                src_bad |= ~torch.isfinite(t.reshape(-1))
        return not bool((~torch.isfinite(out) & ~src_bad).any())

    # -- stage 3: writer -----------------------------------------------------------------------
    def _write(self) -> None:
        try:
            while True:
                item = self._get(self.outq)
                if item is _DONE:
                    return
                p, offset, out, parts, src_bytes = item
                view = memoryview(out.view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
                fd, n = self._fds[p.shard], len(view)
                while view:
                    k = os.pwrite(fd, view, offset)
                    view, offset = view[k:], offset + k
                del view
                self.pool.give(out)
                del out
                pages.release(parts)
                # Drop this unit's source tensors before returning their budget: an in-memory source
                # (ZeRO, DCP) is freed with its last unit, before the reader reads the next tensor,
                # rather than kept alive by these names while the next one is read.
                item = parts = None
                self.read_budget.release(src_bytes)
                self.write_budget.release(n)
                done = self._written.get(p.key, 0) + n
                self._written[p.key] = done
                self.stats.bytes_written += n
                if done == p.nbytes:
                    self.stats.tensors += 1
                if self.bar is not None:
                    self.bar.set_postfix_str(f"{self.stats.tensors}/{self._total} tensors", refresh=False)
                    self.bar.update(n)
        except OSError as e:
            self._fail(CheckpointError(f"cannot write the merged checkpoint in {self.folder} ({e.strerror or e})"))
        except BaseException as e:
            self._fail(e)

    def _open_shards(self) -> None:
        for shard in self.shards:
            path = self.folder / shard.name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.ftruncate(fd, shard.size)  # final size now: the header's promise holds from the start
            os.pwrite(fd, shard.header, 0)

    # -- run -----------------------------------------------------------------------------------
    def run(self, threads: int | None = None) -> StreamStats:
        """Merge every planned tensor into its place; raises the first error of any stage."""
        t0 = time.perf_counter()
        reader = threading.Thread(target=self._read, name="ckptmerge-read", daemon=True)
        writer = threading.Thread(target=self._write, name="ckptmerge-write", daemon=True)
        try:
            try:
                self._open_shards()
            except OSError as e:
                raise CheckpointError(
                    f"cannot create the merged checkpoint in {self.folder} ({e.strerror or e})"
                ) from None
            reader.start()
            writer.start()
            with torch.no_grad(), torch_threads(threads):
                while True:
                    item = self._get(self.inq)
                    if item is _DONE:
                        break
                    p, s, end, parts, n = item
                    item = None  # no reference to the sources may outlive their unit (see _write)
                    out = self._merge_unit(p, s, end, parts)
                    if not self.write_budget.acquire(out.numel() * out.element_size()):
                        break
                    # The writer drops the sources' pages (and returns their budget) once the result is
                    # written, keeping that syscall off this, the busiest, thread.
                    self.outq.put((p, p.offset + s * out.element_size(), out, parts, n))
                    del parts, out
            self.outq.put(_DONE)
            writer.join()
            reader.join()
        except BaseException as e:
            self._fail(e)
        finally:
            for t in (reader, writer):
                if t.is_alive():
                    t.join()
            for fd in self._fds:
                os.close(fd)
        if self.error is not None:
            raise self.error
        self._check_complete()
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def _check_complete(self) -> None:
        """Every byte of every planned tensor was written (nothing skipped, nothing twice)."""
        for shard in self.shards:
            for p in shard.tensors:
                if self._written.get(p.key, 0) != p.nbytes:
                    raise CheckpointError(
                        f"merged tensor {p.key}: wrote {self._written.get(p.key, 0)} of its {p.nbytes} bytes"
                    )
