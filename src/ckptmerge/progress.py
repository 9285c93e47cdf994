"""Progress output that suits where it goes: bars on a terminal, one line per trial in a log.

lm-eval, transformers, datasets and the hub draw a bar per request batch, per file, per split; in a
log file (CI, SLURM, ``nohup``, docker logs) each redraw is a line, hundreds per trial. A run whose
stderr is not a terminal turns those bars off before the libraries are imported, and the trial loop
logs one line per trial instead.
"""

from __future__ import annotations

import os
import sys

# Environment switches the libraries read when imported (tqdm reads TQDM_* at every bar).
_QUIET = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def interactive() -> bool:
    """Whether progress bars have a terminal to redraw on."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def quiet_unless_interactive() -> None:
    """In a non-interactive run, no library progress bars (a user's explicit setting is kept)."""
    if not interactive():
        for key, value in _QUIET.items():
            os.environ.setdefault(key, value)
