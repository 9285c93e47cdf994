"""DeepSpeed ZeRO checkpoints (stage 1, 2 and 3), read through DeepSpeed's own ``zero_to_fp32`` in its
lazy mode: one parameter at a time is gathered from the ranks' partitions.

A DeepSpeed save is a *tag* folder (``global_stepN/``) of ``*_model_states.pt`` (the module's layout,
buffers, and for stage 1/2 its 16-bit weights) and one ``*_optim_states.pt`` per rank (the fp32 master
weights, flattened and partitioned, and the optimizer moments), next to a ``latest`` file naming the
newest tag; an HF Trainer + DeepSpeed ``checkpoint-N/`` holds one such tag. Any of the three folders is
accepted.

``model.precision``: ``master`` (default) reads the fp32 master weights, what training continues from;
``module`` reads the 16-bit module weights that stage 1/2 keep in ``mp_rank_00_model_states.pt`` (ZeRO-3
partitions those too and keeps no whole copy). Memory: the partitions are memory-mapped; stage 3
gathers one parameter at a time into its own tensor, dropping each partition slice's pages once
copied; for stage 1/2, DeepSpeed's lazy mode still joins each parameter
group's partitions into one vector (a copy of the fp32 weights while the checkpoint is open).
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import re
import weakref
from pathlib import Path
from typing import Any

import torch

from ckptmerge.checkpoints import pages
from ckptmerge.checkpoints.reader import TensorMeta
from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

PRECISIONS = ("master", "module")
_GATHER_ELEMS = 1 << 20  # a stage-3 gather copies (and then drops the pages of) this many elements at a time
LATEST = "latest"
_STEP_TAG = re.compile(r"global_step\d+")


def _states(folder: Path) -> tuple[list[Path], list[Path]]:
    return sorted(folder.glob("*_model_states.pt")), sorted(folder.glob("*_optim_states.pt"))


def is_zero_tag(folder: Path) -> bool:
    model, optim = _states(folder)
    return bool(model or optim)


def find_tag(folder: Path) -> Path | None:
    """The ZeRO tag folder ``folder`` is or holds: itself, the tag its ``latest`` names, or its one
    ``global_stepN/`` (an HF Trainer checkpoint); None when it is no DeepSpeed checkpoint."""
    if is_zero_tag(folder):
        return folder
    latest = folder / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        if not tag or "/" in tag or tag in (".", ".."):
            raise CheckpointError(f"{latest} names no tag folder ({tag!r})")
        if not (folder / tag).is_dir():
            raise CheckpointError(f"{latest} names tag {tag}, which is not a folder in {folder}")
        return folder / tag
    tags = [d for d in folder.iterdir() if d.is_dir() and _STEP_TAG.fullmatch(d.name) and is_zero_tag(d)]
    if len(tags) > 1:
        raise CheckpointError(
            f"{folder} holds {len(tags)} DeepSpeed tags ({', '.join(sorted(d.name for d in tags)[:3])}) and no "
            f"'{LATEST}' file: name the tag folder itself"
        )
    return tags[0] if tags else None


class ZeroReader:
    """Names (as saved), shapes and dtypes of a ZeRO checkpoint's model tensors, and each tensor on demand."""

    format = "zero"

    def __init__(self, tag: Path, label: str, precision: str = "master") -> None:
        if precision not in PRECISIONS:
            raise CheckpointError(f"model.precision={precision!r} is not valid (choose from: {', '.join(PRECISIONS)})")
        self.folder, self.label, self.precision = Path(tag), label, precision
        self.tag = self.folder.name
        model_files, optim_files = _states(self.folder)
        self._files = model_files + optim_files
        if not model_files:
            raise CheckpointError(
                f"checkpoint {label}: tag {self.tag} has no *_model_states.pt (only optimizer shards?); "
                "DeepSpeed writes the model states beside them"
            )
        self.stage3 = any(f.name.startswith("zero_pp_rank_") for f in model_files)
        if self.stage3 and len(model_files) != len(optim_files):
            raise CheckpointError(
                f"checkpoint {label}: tag {self.tag} has {len(model_files)} model-state files but "
                f"{len(optim_files)} optimizer-state files; a rank's file is missing"
            )
        # Stage-3 partitions are memory-mapped: pages a gather touched are dropped after it (the page
        # cache keeps them), or every tensor read would stay resident until the checkpoint is closed.
        self._partitions: list[torch.Tensor] = []
        self._ranges: list[int] = []
        self._finalizer = weakref.finalize(self, pages.unregister_file_ranges, self._ranges)
        self._state = self._open_module() if precision == "module" else self._open_master()
        self._register_partitions()

    def _deepspeed(self, what: str, fn: Any) -> Any:
        """Call into DeepSpeed: its prints and progress bars go to the log, its errors become one line
        naming the checkpoint."""
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                return fn()
        except (
            OSError,
            ValueError,
            RuntimeError,
            KeyError,
            EOFError,
            pickle.UnpicklingError,
            NotImplementedError,
        ) as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"checkpoint {self.label}: {what} cannot be read ({msg})") from None
        finally:
            for line in out.getvalue().splitlines():
                log.debug("deepspeed: %s", line)

    def _open_master(self) -> dict[str, Any]:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return self._deepspeed(
            f"ZeRO tag {self.tag}",
            lambda: get_fp32_state_dict_from_zero_checkpoint(str(self.folder.parent), tag=self.tag, lazy_mode=True),
        )

    def _open_module(self) -> dict[str, Any]:
        if self.stage3:
            raise CheckpointError(
                f"checkpoint {self.label}: model.precision=module needs ZeRO stage 1 or 2; a ZeRO-3 tag keeps "
                "no whole 16-bit module weights (use model.precision=master)"
            )
        path = self.folder / "mp_rank_00_model_states.pt"
        state = self._deepspeed(path.name, lambda: torch.load(path, map_location="cpu", mmap=True, weights_only=False))
        module = state.get("module") if isinstance(state, dict) else None
        if not isinstance(module, dict) or not module:
            raise CheckpointError(f"checkpoint {self.label}: {path.name} holds no module weights")
        return {k: v for k, v in module.items() if isinstance(v, torch.Tensor)}

    def _register_partitions(self) -> None:
        from deepspeed.utils.zero_to_fp32 import GatheredTensor

        lazy = next((v for v in self._state.values() if isinstance(v, GatheredTensor)), None)
        if lazy is None:
            return
        seen: set[int] = set()
        for rank in lazy.flat_groups:
            for t in rank:
                storage = t.untyped_storage()
                start = storage.data_ptr()
                if start in seen or not t.is_cpu:
                    continue
                seen.add(start)
                pages.register_file_range(start, storage.nbytes())
                self._ranges.append(start)
                self._partitions.append(t)

    @staticmethod
    def _gather(g: Any) -> torch.Tensor:
        """A stage-3 parameter from its ranks' partitions, as DeepSpeed's ``GatheredTensor.contiguous``
        joins them (each rank's slice of the flat groups it spans, in rank order, padding cut), but
        copied slice by slice into the one output tensor, each slice's mapped pages dropped once
        copied: DeepSpeed's ``torch.cat`` holds a padded copy and every page it touched, twice the
        parameter, where this holds the parameter and one piece of ``_GATHER_ELEMS``."""
        numel = g.shape.numel()
        out = torch.empty(numel, dtype=g.dtype)
        lo_idx, hi_idx, offs = g.offset, g.offset + g.partitioned_numel, g.flat_groups_offset
        pos = 0
        for rank in g.flat_groups:
            for gid in range(len(offs) - 1):
                lo, hi = offs[gid], offs[gid + 1]
                if hi <= lo_idx or lo >= hi_idx:
                    continue
                src = rank[gid][max(lo_idx, lo) - lo : min(hi_idx, hi) - lo]
                for s in range(0, src.numel(), _GATHER_ELEMS):
                    piece = src[s : s + _GATHER_ELEMS]
                    take = min(piece.numel(), numel - pos)
                    if take > 0:
                        out[pos : pos + take].copy_(piece[:take])
                    pos += piece.numel()
                    pages.release([piece])
        return out.view(g.shape)

    def raw_meta(self) -> dict[str, TensorMeta]:
        return {k: TensorMeta(tuple(int(d) for d in v.shape), v.dtype) for k, v in self._state.items()}

    def data_files(self) -> list[Path]:
        return list(self._files)

    def load(self, key: str) -> torch.Tensor:
        value = self._state[key]
        # DeepSpeed's lazy stage-3 tensor (its partitions, as DeepSpeed found them) is gathered here;
        # the rest are tensors already.
        lazy = self._partitions and not isinstance(value, torch.Tensor)
        t = self._deepspeed(f"tensor {key}", (lambda: self._gather(value)) if lazy else value.contiguous)
        expect = tuple(int(d) for d in value.shape)
        if tuple(t.shape) != expect:
            raise CheckpointError(
                f"checkpoint {self.label}: tensor {key} gathered as {list(t.shape)}, expected {list(expect)}"
            )
        return t
