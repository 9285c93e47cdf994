"""The embedded tiny trajectory: a real from-scratch pretraining run of a tiny GPT-NeoX (Pythia
architecture) on the docstrings of the Python standard library, its intermediate checkpoints, and
lm-eval tasks over held-out docstrings. Needs no download; cached per spec fingerprint.

    >>> trajectory = build_trajectory(TrajectorySpec.default(), default_cache_dir())
    >>> trajectory.checkpoints[-2:], trajectory.tasks_dir, trajectory.max_length
"""

from __future__ import annotations

from .build import Trajectory, TrajectorySpec, build_trajectory, default_cache_dir
from .tasks import DEV_TASKS, TEST_TASKS

__all__ = [
    "DEV_TASKS",
    "TEST_TASKS",
    "Trajectory",
    "TrajectorySpec",
    "build_trajectory",
    "default_cache_dir",
]
