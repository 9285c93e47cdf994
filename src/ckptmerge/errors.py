"""Errors that end a run with one clear line and a non-zero exit."""

from __future__ import annotations


class CkptMergeError(Exception):
    """A problem the user can fix (bad config, bad input, unreachable service).

    ``ckptmerge.cli`` prints ``str(error)`` as one line and exits non-zero; nothing half done is kept.
    """


class ConfigError(CkptMergeError):
    """A config value is wrong; the message names the key."""


class CheckpointError(CkptMergeError):
    """A checkpoint is missing, unreadable or does not match the others."""


class EvaluationError(CkptMergeError):
    """A task or metric is unknown or cannot be evaluated."""


class TrackingError(CkptMergeError):
    """The tracking server or registry cannot be used."""


class Stopped(KeyboardInterrupt):
    """SIGTERM, SIGINT or SIGHUP arrived (``timeout``, ``docker stop``, Kubernetes, SLURM, Ctrl-C, a dropped
    ssh session).

    Raised by the signal handler ``ckptmerge.cli`` installs, so that ``finally`` blocks and
    ``except BaseException`` cleanups run (the parent and trial runs end KILLED, a half-written merge
    is removed). A ``KeyboardInterrupt`` so that code which already treats Ctrl-C as a stop does so
    for SIGTERM too; it is no ``Exception``, so nothing that catches errors swallows it.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process a signal ended: 143, 130, 129
