"""Errors that end a run with one clear line and a non-zero exit."""
from __future__ import annotations


class CkptMergeError(Exception):
    """A problem the user can fix (bad config, bad input, unreachable service).

    ``src/main.py`` prints ``str(error)`` as one line and exits non-zero; nothing half done is kept.
    """


class ConfigError(CkptMergeError):
    """A config value is wrong; the message names the key."""


class CheckpointError(CkptMergeError):
    """A checkpoint is missing, unreadable or does not match the others."""


class EvaluationError(CkptMergeError):
    """A task or metric is unknown or cannot be evaluated."""


class TrackingError(CkptMergeError):
    """The tracking server or registry cannot be used."""
