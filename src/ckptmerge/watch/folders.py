"""Checkpoint folders in a watched directory, recognised by name, ordered by training step.

Trainers name their checkpoint folders after the step: ``stepN`` (Pythia, our embedded trajectory,
OLMo-core), ``step-N`` (torchtitan), ``checkpoint-N`` (Hugging Face Trainer), ``global_stepN``
(DeepSpeed), ``iter_NNNNNNN`` (Megatron).
Anything else in the folder (logs, ``runs/``, a ``latest`` file, a temporary folder a trainer renames
into place) is not a checkpoint. Names are matched whole, so ``checkpoint-500.tmp`` is not one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# One pattern per trainer style; the whole name must match.
STEP_PATTERNS = (
    re.compile(r"step(\d+)"),
    re.compile(r"step-(\d+)"),
    re.compile(r"checkpoint-(\d+)"),
    re.compile(r"global_step(\d+)"),
    re.compile(r"iter_(\d+)"),
)


@dataclass(frozen=True, order=True)
class StepFolder:
    """A checkpoint folder and the training step its name carries (ordered by step, then name)."""

    step: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def step_of(name: str) -> int | None:
    """The training step a checkpoint folder's name carries, or None when it names no checkpoint."""
    for pattern in STEP_PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return int(m.group(1))
    return None


def step_folders(directory: Path) -> list[StepFolder]:
    """The checkpoint folders directly in ``directory``, oldest (lowest step) first.

    Two folders with the same step (``step100`` and ``checkpoint-100``) are both listed, by name: which
    one is meant is the user's to say, and the pair check (model.order=check) refuses a non-increasing pair.
    """
    found = []
    for entry in Path(directory).iterdir():
        step = step_of(entry.name)
        if step is not None and entry.is_dir():
            found.append(StepFolder(step, entry))
    return sorted(found)


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def checkpoint_folder_hint(directory: Path) -> str | None:
    """A warning when ``directory`` is itself a checkpoint (``config.json`` and weights, no checkpoint
    folders in it) rather than the folder a trainer writes its checkpoints into: a watch there would
    wait for ever with nothing to say."""
    directory = Path(directory)
    if not (directory / "config.json").is_file() or step_folders(directory):
        return None
    if not any(next(directory.glob(p), None) for p in WEIGHT_PATTERNS):
        return None
    return (
        f"watch.dir={directory} is itself a checkpoint folder (config.json and weights), not a folder of "
        f"checkpoints; watch the folder the trainer writes them into, e.g. watch.dir={directory.parent}"
    )


def content_digest(folder: Path) -> str:
    """A checkpoint's identity by content: the sha256 of its weight files' bytes, in name order. A folder
    renamed, copied or re-linked keeps it, so a watch does not search the same weights twice."""
    h = hashlib.sha256()
    files = sorted(p for pattern in ("*.safetensors", "*.bin") for p in Path(folder).glob(pattern))
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:24]
