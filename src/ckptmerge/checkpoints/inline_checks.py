"""The content pass's finite and digest checks, run on the merge stream's own reads.

``action=merge`` used to read every input twice: once for :func:`~ckptmerge.checkpoints.content.scan`
(NaN/Inf, and a content digest that tells a copy from a distinct checkpoint), then again for the merge.
Here the merge stream's reader thread hands each tensor's views to :meth:`InlineChecks.tensor`, chunk
range by chunk range, right after it has faulted them in, so a merge reads each input once. The digest
terms are the scan's own (:func:`~ckptmerge.checkpoints.content.chunk_sum` over the same
``CHUNK_ELEMS`` chunks, hashed in the same tensor order), so the digests are identical to the scan's.

A refusal raises in the reader thread; the stream stops, and the merge's atomic folder is removed:
nothing is half written. The checks that need every digest (no two inputs are copies; equal training
steps) run in :meth:`InlineChecks.finish`, after the stream and before the folder is published.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import torch

from ckptmerge.checkpoints.checkpoint_set import CheckpointSet
from ckptmerge.checkpoints.content import (
    CHUNK_ELEMS,
    _chunks,
    check_after_reading,
    chunk_sum,
    judge_nonfinite,
    log_kept,
)
from ckptmerge.checkpoints.reader import TensorMeta


class InlineChecks:
    """Finite weights and content digests of ``cset``'s checkpoints, fed by the merge's reads."""

    def __init__(
        self, cset: CheckpointSet, steps: list[int] | None, allow_nonfinite: bool, nonfinite_hint: str
    ) -> None:
        self.cset, self.steps = cset, steps
        self.allow_nonfinite, self.hint = allow_nonfinite, nonfinite_hint
        self.meta: dict[str, TensorMeta] = cset.meta()
        # key -> per checkpoint, the digest term of each CHUNK_ELEMS chunk (8 bytes per MiB-element chunk)
        self.sums: dict[str, list[list[float]]] = {}
        self._judged: set[str] = set()
        self.kept: list[str] = []

    @staticmethod
    def span_end(upto: int) -> int:
        """Where the digest chunk holding element ``upto - 1`` ends: the stream faults that far in before
        calling :meth:`tensor`, so each chunk is summed while its pages are resident."""
        return -(-upto // CHUNK_ELEMS) * CHUNK_ELEMS

    def tensor(self, key: str, flats: Sequence[torch.Tensor], upto: int) -> None:
        """Take the digest terms of every chunk of tensor ``key`` that starts before element ``upto``
        (``flats``: each checkpoint's whole flat view, in checkpoint order); refuse NaN/Inf as the scan does."""
        dtype = self.meta[key].dtype
        per = self.sums.setdefault(key, [[] for _ in flats])
        start = len(per[0]) * CHUNK_ELEMS
        numel = flats[0].numel()
        bad: list[int] = []
        for s in range(start, min(upto, numel), CHUNK_ELEMS):
            for i, flat in enumerate(flats):
                total, ok = chunk_sum(flat[s : s + CHUNK_ELEMS], dtype)
                per[i].append(total)
                if not ok and i not in bad:
                    bad.append(i)
        if bad and key not in self._judged:
            self._judge(key, flats)

    def _judge(self, key: str, flats: Sequence[torch.Tensor]) -> None:
        """The first NaN/Inf in tensor ``key``: judged on the whole tensors, as the scan judges it."""
        from ckptmerge.checkpoints.stream import all_finite

        self._judged.add(key)
        cs = self.cset.checkpoints
        bad = [c for c, f in zip(cs, flats) if not all_finite(f)]
        same = all(torch.equal(flats[0], f) for f in flats[1:])
        if judge_nonfinite(self.cset, key, bad, self.allow_nonfinite, self.hint, same=same):
            self.kept.append(key)

    def digests(self) -> list[str]:
        """One content digest per checkpoint, byte for byte what :func:`content.scan` returns."""
        hs = [hashlib.sha256() for _ in self.cset.checkpoints]
        for key, m in self.meta.items():
            per = self.sums.get(key)
            if per is None or len(per[0]) * CHUNK_ELEMS < m.numel:  # not streamed (never, for a full merge)
                per = [[chunk_sum(p, m.dtype)[0] for p in _chunks(c, key)] for c in self.cset.checkpoints]
            for h, terms in zip(hs, per):
                for t in terms:
                    h.update(struct.pack("<d", t))
        return [h.hexdigest() for h in hs]

    def finish(self) -> None:
        """The checks that need every digest: no two checkpoints are copies; training steps increase."""
        log_kept(self.kept)
        check_after_reading(self.cset, self.digests(), self.steps)
