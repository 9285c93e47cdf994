"""One seed feeds Python's, NumPy's and torch's generators, so the same config gives the same trials."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed every generator the search touches; optionally cap torch's intra-op threads."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
