"""Checkpoint folders in a watched directory, recognised by name, ordered by training step.

Trainers name their checkpoint folders after the step: ``stepN`` (Pythia, our embedded trajectory,
OLMo-core), ``step-N`` (torchtitan), ``checkpoint-N`` (Hugging Face Trainer), ``global_stepN``
(DeepSpeed), ``iter_NNNNNNN`` (Megatron).
Anything else in the folder (logs, ``runs/``, a ``latest`` file, a temporary folder a trainer renames
into place) is not a checkpoint. Names are matched whole, so ``checkpoint-500.tmp`` is not one.
"""

from __future__ import annotations

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
