"""The resident model of a search: built once, its parameters overwritten in place by every trial.

:class:`ResidentModel` holds what every runtime shares: the tokenizer, the pairing of checkpoint
tensors with model tensors, zero-copy views of the checkpoints' memory-mapped files as the sources
of each model tensor, and the merge in place (:meth:`~ResidentModel.apply`, :meth:`~ResidentModel.apply_fn`,
``merge_fn``). How the model is built, and which part of each tensor this process holds, is the
subclass's: :class:`ckptmerge.resident.single.SingleResidentModel` (one process, whole tensors) and
:class:`ckptmerge.resident.zero.ZeroResidentModel` (ZeRO-3 partitions, one per rank).

The checkpoint tensors are never copied into the process: each source is a zero-copy view of its
memory-mapped file (``CheckpointReader.get``), so k checkpoints cost page cache, which the kernel
shares and can evict, not k models of anonymous memory. A trial opens and reads no file; it runs the
merge math from those views into the existing parameter storage, a cache-sized chunk at a time. (On
a GPU the sources are copied to the device where they fit, and merged there.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckptmerge.checkpoints.checkpoint_set import CheckpointSet
from ckptmerge.checkpoints.reader import CheckpointReader, TensorReader, reads_into_memory
from ckptmerge.checkpoints.stream import take_newest, torch_threads
from ckptmerge.errors import CheckpointError
from ckptmerge.merge.linear import linear_merge_into

log = logging.getLogger(__name__)

# Elements per in-place merge step on a CPU: the fp32 temporaries (4 MB) stay in cache and are reused
# by malloc, instead of a model-sized allocation (and its page faults) per tensor per trial.
CHUNK_ELEMS = 1 << 20

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("runtime.device=cuda but no CUDA device is available")
    return device


def resolve_dtype(name: str, cset: CheckpointSet, device: str) -> torch.dtype:
    """``auto`` keeps the checkpoints' floating dtype (fp32 for half precision on a CPU, where it is slow)."""
    if name != "auto":
        return _DTYPES[name]
    floats = [m.dtype for m in cset.meta().values() if m.dtype.is_floating_point]
    dtype = floats[0] if floats else torch.float32
    if device == "cpu" and dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


@contextmanager
def loading(ref: str) -> Iterator[None]:
    """A checkpoint's files that transformers cannot load end the run as one line naming ``ref``."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load checkpoint {ref}: {str(e).splitlines()[0]}") from None


def pair_tensor_names(
    file_shapes: Mapping[str, tuple[int, ...]],
    model_shapes: Mapping[str, tuple[int, ...]],
    same_values: Callable[[str, str], bool] | None = None,
) -> dict[str, str]:
    """Checkpoint tensor name → model tensor name: the same name, else a free model tensor of that shape
    (and, given ``same_values(file_key, model_key)``, holding exactly its values), name similarity
    breaking ties, e.g. GPT-NeoX's ``embed_out`` is ``lm_head`` in transformers 5. A file tensor with
    no such partner is left out (model state it is not, e.g. an attention mask buffer)."""
    import difflib

    mapping = {k: k for k in file_shapes if k in model_shapes}
    free = [k for k in model_shapes if k not in mapping]
    for key in (k for k in file_shapes if k not in mapping):
        same = [
            m
            for m in free
            if model_shapes[m] == tuple(file_shapes[key]) and (same_values is None or same_values(key, m))
        ]
        if not same:
            continue
        best = max(same, key=lambda m: difflib.SequenceMatcher(None, m, key).ratio())
        mapping[key] = best
        free.remove(best)
        log.info("Checkpoint tensor %s is model tensor %s", key, best)
    return mapping


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor goes: elements ``[start, start + count)`` of its flattened values
    (``flat``: a partition of the model tensor), or the whole tensor (``flat`` False)."""

    key: str
    start: int
    count: int
    flat: bool

    def source(self, reader: TensorReader) -> torch.Tensor:
        t = reader.get(self.key)
        if not self.flat:
            return t
        part = t.reshape(-1).narrow(0, self.start, self.count)
        # A ZeRO or DCP tensor was read into memory whole: keep only this partition, not a view of it all.
        return part.clone() if reads_into_memory(reader) else part


class ResidentModel:
    """One model in memory whose parameters become ``Σ wᵢ·θᵢ`` on :meth:`apply`.

    The shared set-up (:meth:`__init__`): the tokenizer and the model from the newest checkpoint
    (:meth:`_build_model`, the subclass's), then every model tensor paired with that tensor of every
    checkpoint (:meth:`_map_sources`, through the subclass's :meth:`_model_shapes` and
    :meth:`_destination`).

    Integer and bool checkpoint tensors are never averaged: they are the newest checkpoint's, decided
    by the checkpoint's dtype, not the model tensor's (transformers may load an integer tensor into a
    float parameter). The streaming writer applies the same rule (``stream.take_newest``), so a trial
    and the written merge hold the same values.
    """

    _scratch_buf: torch.Tensor | None = None  # see _scratch

    def __init__(self, cset: CheckpointSet, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoTokenizer

        self.cset, self.device, self.dtype = cset, device, dtype
        newest = cset.newest
        with loading(newest.ref.text):
            self.tokenizer = AutoTokenizer.from_pretrained(newest.config_dir, trust_remote_code=cset.trust_remote_code)
        self.model = self._build_model(newest.config_dir)
        self.weights: tuple[float, ...] = tuple(0.0 for _ in cset.checkpoints[:-1]) + (1.0,)
        self._device_full = False
        self._slots: list[Slot] = []
        self._targets = self._map_sources()

    # -- what a subclass decides ------------------------------------------------------------------

    def _build_model(self, folder: Path) -> Any:
        """The model from the newest checkpoint's ``folder``, on ``self.device`` in ``self.dtype``, in eval mode."""
        raise NotImplementedError

    def _model_shapes(self) -> dict[str, tuple[int, ...]]:
        """Model tensor name → its full shape (also of a tensor this process holds only part of)."""
        raise NotImplementedError

    def _same_values(self) -> Callable[[str, str], bool] | None:
        """``(checkpoint key, model key) → holds exactly its values``, to pair renamed tensors; None: by shape only."""
        return None

    def _destination(self, model_key: str) -> tuple[Any, torch.Tensor, int, int, bool]:
        """``(identity, storage, start, count, flat)`` of a model tensor: this process's storage for it,
        and which of its flattened elements that holds (``flat``), or all of them. Tensors of one
        identity (tied weights) are merged once."""
        raise NotImplementedError

    def _parameters(self) -> list[tuple[str, Any]]:
        """``(name, identity)`` of every parameter: each must come from the checkpoints."""
        raise NotImplementedError

    def _merge_threads(self) -> int | None:
        """Threads for a trial's merge: the streaming writer's default on a CPU, else unchanged."""
        return None if self.device == "cpu" else torch.get_num_threads()

    # -- the shared set-up ------------------------------------------------------------------------

    def _to_device(self, srcs: list[torch.Tensor], key: str) -> list[torch.Tensor]:
        """Sources on the model's device where they fit; else left mapped on the CPU (merged from there)."""
        if self.device == "cpu" or self._device_full:
            return srcs
        try:
            return [s.to(self.device) for s in srcs]
        except torch.OutOfMemoryError:
            self._device_full = True
            log.warning("Checkpoint tensors from %s on stay on the CPU: the device is full", key)
            return srcs

    def _map_sources(self) -> list[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        """Pair each model tensor (or this process's part of it) with the same elements of that tensor
        of every checkpoint: zero-copy views of the files.

        Usually the same name; transformers may rename on load (GPT-NeoX's ``embed_out`` is ``lm_head``
        in transformers 5). Rather than depend on its private conversion tables, a file tensor whose
        name is not in the model is paired with the free model tensor of its shape (and, where the
        model holds values to compare, exactly its values), name similarity breaking ties.
        """
        meta = self.cset.meta()
        shapes = self._model_shapes()
        mapping = pair_tensor_names({k: m.shape for k, m in meta.items()}, shapes, self._same_values())
        targets = []
        covered: set[Any] = set()
        for key, model_key in mapping.items():
            if shapes[model_key] != tuple(meta[key].shape):
                raise CheckpointError(
                    f"model tensor {model_key} has shape {list(shapes[model_key])}, "
                    f"checkpoint has {list(meta[key].shape)}"
                )
            ident, dest, start, count, flat = self._destination(model_key)
            if ident in covered:  # tied weights: merge the shared storage once
                continue
            covered.add(ident)
            slot = Slot(key, start, count, flat)
            srcs = self._to_device([slot.source(c.reader) for c in self.cset.checkpoints], key)
            targets.append((model_key, dest, srcs))
            self._slots.append(slot)
        skipped = [k for k in meta if k not in mapping]
        if skipped:
            log.info("%d checkpoint tensors are not model state and are left as loaded: %s", len(skipped), skipped[:3])
        # Every floating parameter must come from the checkpoints, or a trial would not be the merge it claims.
        for name, ident in self._parameters():
            if ident not in covered:
                raise CheckpointError(f"model parameter {name} has no tensor in the checkpoints; cannot merge it")
        if not targets:
            raise CheckpointError("no checkpoint tensor matches the model's parameters")
        return targets

    # -- the merge in place -----------------------------------------------------------------------

    # merge.method when it is not linear: trials merge with the function the result is written with
    merge_fn: Callable[..., torch.Tensor] | None = None

    @torch.no_grad()
    def apply(self, weights: Sequence[float]) -> None:
        """Overwrite the parameters with the merge ``Σ wᵢ·θᵢ`` (fp32 arithmetic, cast back), or with
        ``merge_fn(sources, weights, dtype)`` per parameter when another merge method was chosen."""
        if len(weights) != len(self.cset):
            raise ValueError(f"{len(weights)} weights for {len(self.cset)} checkpoints")
        if self.merge_fn is not None:
            fn, ws = self.merge_fn, [float(w) for w in weights]
            self.apply_fn(lambda key, srcs: fn(srcs, ws, srcs[-1].dtype))
            self.weights = tuple(ws)
            return
        # Thread count as for the streaming writer (see stream.default_threads: many small ops).
        with torch_threads(self._merge_threads()):
            for _, dest, srcs in self._targets:
                if take_newest(srcs):
                    dest.copy_(srcs[-1])
                    continue
                if dest.device.type != "cpu" or not dest.is_contiguous() or dest.numel() <= CHUNK_ELEMS:
                    linear_merge_into(dest, srcs, weights)
                    continue
                # Elementwise math, so merging matching flat chunks is the same merge, at cache speed.
                flat, flats = dest.view(-1), [s.reshape(-1) for s in srcs]
                for a in range(0, flat.numel(), CHUNK_ELEMS):
                    linear_merge_into(
                        flat[a : a + CHUNK_ELEMS],
                        [f[a : a + CHUNK_ELEMS] for f in flats],
                        weights,
                        scratch=self._scratch(),
                    )
        self.weights = tuple(float(w) for w in weights)

    def _scratch(self) -> torch.Tensor:
        """One chunk of fp32 accumulator, reused by every chunk of every trial (half-precision models)."""
        if self._scratch_buf is None:
            self._scratch_buf = torch.empty(CHUNK_ELEMS, dtype=torch.float32)
        return self._scratch_buf

    @torch.no_grad()
    def apply_fn(self, fn: Callable[[str, list[torch.Tensor]], torch.Tensor]) -> None:
        """Overwrite each parameter with ``fn(model_key, sources)``: merges that are not linear (Fisher, RegMean)."""
        for key, dest, srcs in self._targets:
            dest.copy_(srcs[-1] if take_newest(srcs) else fn(key, srcs))
        self.weights = ()

    @torch.no_grad()
    def load_folder(self, folder: Path) -> None:
        """Overwrite the model tensors (this process's part of each) from a written checkpoint folder."""
        reader = CheckpointReader(Path(folder))
        missing = [s.key for s in self._slots if s.key not in reader.meta()]
        if missing:
            raise CheckpointError(f"the written merge in {folder} lacks tensor {missing[0]}")
        for slot, (_, dest, _) in zip(self._slots, self._targets):
            linear_merge_into(dest, [slot.source(reader).to(dest.device)], [1.0])
        self.weights = ()

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def nbytes_sources(self) -> int:
        """Bytes of checkpoint tensors the trials merge from (mapped files on a CPU, not process memory)."""
        return sum(s.numel() * s.element_size() for _, _, srcs in self._targets for s in srcs)
