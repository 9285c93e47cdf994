"""Whether a checkpoint folder a trainer is writing is complete enough to merge.

Trainers write checkpoints in place, file by file, so a folder that exists is not a checkpoint yet. A
folder is used only when all of these hold:

* ``config.json`` is present and parses;
* a weight file is present: ``model.safetensors``, a safetensors index with every shard it names, or
  ``pytorch_model.bin`` (or its index with every shard);
* every safetensors file is as long as its own header says (8 bytes + header + the largest data
  offset): a file still being written is shorter;
* nothing in it changed for ``settle_s`` seconds (sizes and modification times) — unless the trainer
  has declared it complete: ``trainer_state.json`` (the Hugging Face Trainer writes it last) or
  ``.ckptmerge-complete`` (written by :mod:`ckptmerge.integrations.hf_trainer` or any trainer);
* the trainer's ``latest`` pointer, where the watched folder has one (DeepSpeed's ``latest``,
  Megatron's ``latest_checkpointed_iteration.txt``), has reached its step.

Training-native checkpoints have no config.json or safetensors of their own:

* a DeepSpeed ZeRO tag (``global_stepN/``, or an HF Trainer ``checkpoint-N/`` holding one) needs its
  model-state and optimizer-state files (for ZeRO-3 one of each per rank); it is complete once the
  ``latest`` pointer names its step (DeepSpeed writes it after every rank saved), else once settled;
* a PyTorch Distributed Checkpoint needs its ``.metadata`` (written last), then is used once settled.

:func:`missing_part` answers the structural questions from the files alone; :class:`Settling`
remembers what each folder looked like and since when.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path

from ckptmerge.watch.folders import step_of

COMPLETION_MARKERS = ("trainer_state.json", ".ckptmerge-complete")
CKPTMERGE_MARKER = ".ckptmerge-complete"
LATEST_POINTERS = ("latest", "latest_checkpointed_iteration.txt")

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


def safetensors_shortfall(path: Path) -> str | None:
    """Why a safetensors file is not whole yet (too short for its header's promise), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} has {size} bytes, not even its header length yet"
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                return f"{path.name} has {size} bytes, its header alone needs {8 + n}"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        return f"{path.name} cannot be read yet ({type(e).__name__})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"{path.name} has {size} of {expected} bytes"
    return None


def _index_shortfall(folder: Path, index_name: str) -> str | None:
    try:
        weight_map = json.loads((folder / index_name).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{index_name} cannot be read yet"
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            return f"shard {shard} named by {index_name} is missing"
        if shard.endswith(".safetensors"):
            short = safetensors_shortfall(folder / shard)
            if short:
                return short
    return None


DCP_METADATA = ".metadata"


def native_kind(folder: Path) -> str | None:
    """``dcp`` or ``zero`` for a training-native checkpoint folder (also one still being written), else None."""
    folder = Path(folder)
    if (folder / DCP_METADATA).is_file() or any(folder.glob("*.distcp")):
        return "dcp"
    if _zero_tag(folder) is not None:
        return "zero"
    return None


def _has_zero_files(folder: Path) -> bool:
    return any(folder.glob("*_model_states.pt")) or any(folder.glob("*_optim_states.pt"))


def _zero_tag(folder: Path) -> Path | None:
    """The DeepSpeed tag folder ``folder`` is, or holds (an HF Trainer ``checkpoint-N/``)."""
    if _has_zero_files(folder):
        return folder
    tags = sorted(d for d in folder.glob("global_step*") if d.is_dir() and _has_zero_files(d))
    return tags[-1] if tags else None


def _zero_shortfall(tag: Path) -> str | None:
    model, optim = sorted(tag.glob("*_model_states.pt")), sorted(tag.glob("*_optim_states.pt"))
    if not model:
        return f"{tag.name} has no *_model_states.pt yet"
    if not optim:
        return f"{tag.name} has no *_optim_states.pt yet"
    if any(f.name.startswith("zero_pp_rank_") for f in model) and len(model) != len(optim):
        return (
            f"{tag.name} has {len(model)} model-state and {len(optim)} optimizer-state files (a rank is still saving)"
        )
    return None


def _has_hf_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE))


def missing_part(folder: Path) -> str | None:
    """What the checkpoint in ``folder`` still lacks, from its files alone; None when nothing does."""
    folder = Path(folder)
    kind = native_kind(folder)
    if kind == "dcp":
        if not (folder / DCP_METADATA).is_file():
            return f"{DCP_METADATA} is not written yet (a Distributed Checkpoint writes it last)"
        return None
    tag = _zero_tag(folder) if kind == "zero" else None
    if tag == folder:  # a bare tag: config and tokenizer come from model.config
        return _zero_shortfall(folder)
    if tag is not None and not _has_hf_weights(folder):  # an HF Trainer checkpoint holding a ZeRO tag
        return _zero_shortfall(tag)
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return "config.json is missing"
    except (OSError, ValueError):
        return "config.json is not valid JSON yet"
    if (folder / SAFE_INDEX).is_file():
        return _index_shortfall(folder, SAFE_INDEX)
    if (folder / SAFE_SINGLE).is_file():
        return safetensors_shortfall(folder / SAFE_SINGLE)
    if (folder / BIN_INDEX).is_file():
        return _index_shortfall(folder, BIN_INDEX)
    if (folder / BIN_SINGLE).is_file():
        return None  # a pickle carries no length of its own: the settling interval has to vouch for it
    return "no weight file yet (model.safetensors, its index, or pytorch_model.bin)"


def has_completion_marker(folder: Path) -> bool:
    return any((Path(folder) / m).is_file() for m in COMPLETION_MARKERS)


def latest_pointer_step(directory: Path) -> int | None:
    """The step a trainer's ``latest`` pointer in ``directory`` names (DeepSpeed, Megatron), if any."""
    for name in LATEST_POINTERS:
        try:
            text = (Path(directory) / name).read_text().strip()
        except OSError:
            continue
        step = step_of(text) if not text.isdigit() else int(text)
        if step is None:
            m = re.search(r"(\d+)$", text)
            step = int(m.group(1)) if m else None
        if step is not None:
            return step
    return None


def fingerprint(folder: Path) -> tuple:
    """Every file under ``folder`` with its size and modification time: any write changes it."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except OSError:  # removed between listing and stat: the folder is changing
                entries.append((p, -1, -1))
                continue
            entries.append((p, st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class Settling:
    """How long each folder has looked the same; a folder is settled after ``settle_s`` unchanged."""

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self._clock = clock
        self._seen: dict[Path, tuple[tuple, float]] = {}

    def unchanged_for(self, folder: Path) -> float:
        """Seconds since ``folder`` last changed, as far as this watcher has seen (0 on first sight)."""
        fp, now = fingerprint(folder), self._clock()
        old = self._seen.get(folder)
        if old is None or old[0] != fp:
            self._seen[folder] = (fp, now)
            return 0.0
        return now - old[1]


def why_not_ready(folder: Path, step: int, quiet_s: float, settle_s: float, latest_step: int | None) -> str | None:
    """Why the checkpoint ``folder`` (at training ``step``, unchanged for ``quiet_s`` seconds as far as
    the watcher has seen) cannot be used yet, or None when it can."""
    if latest_step is not None and step > latest_step:
        return f"the trainer's latest pointer names step {latest_step}"
    missing = missing_part(folder)
    if missing:
        return missing
    if has_completion_marker(folder):
        return None
    if latest_step is not None and native_kind(folder) == "zero":
        return None  # DeepSpeed names a tag in ``latest`` only after every rank saved it
    if quiet_s < settle_s:
        return f"settling (used once its files are unchanged for {settle_s:g}s)"
    return None
