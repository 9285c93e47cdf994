"""SIGTERM and SIGINT as :class:`~ckptmerge.errors.Stopped`, raised where it is safe to stop.

``timeout``, ``docker stop``, Kubernetes and SLURM send SIGTERM, whose default ends the process on the
spot, leaving its MLflow runs RUNNING. The handler raises ``Stopped`` in the main thread instead, so
cleanups run (``finally``, ``except BaseException``): the runs end KILLED, a half-written merge is
removed.

Not inside a call to the tracking store, though: an exception raised between a write and its commit
leaves the transaction open and a sqlite store locked, so marking the runs KILLED waits 20 s for the
lock and then fails. A signal that arrives there is held: raised when a call made through
:class:`HoldingStops` (the tracker's MLflow client) returns, or else when ``SIGALRM``, every 10 ms,
finds no store code running (MLflow calls made elsewhere, e.g. model logging).

The finish of a search is one step under signals: :func:`committing` holds a stop from the moment the
result is committed (version registered, run FINISHED) until the enclosing :func:`publishing` block
(``src/main.py``: the action and its ``result.json``; ``watch``: one pair) has reported it. A stop
before the commit undoes the search (KILLED, nothing registered); one after it changes nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from ckptmerge.errors import Stopped

# Modules whose code runs inside a database transaction of a tracking or registry store.
_STORE_MODULES = ("sqlalchemy", "alembic", "mlflow.store.db")
_RECHECK_S = 0.01
_pending: int | None = None  # a signal held until the store call in progress returns
_holding = 0  # depth of holding() blocks
_publishing: list[bool] = []  # per open publishing() block: whether a commit inside it holds stops to its end


def _in_store_call(frame: FrameType | None) -> bool:
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if name.startswith(_STORE_MODULES) or name.endswith("sqlalchemy_store"):
            return True
        frame = frame.f_back
    return False


def _on_stop(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _holding or _in_store_call(frame):
        if _pending is None:
            _pending = signum
            signal.setitimer(signal.ITIMER_REAL, _RECHECK_S)
        return
    _pending = None
    raise Stopped(signum)


def _on_recheck(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _pending is None:
        return
    if _holding or _in_store_call(frame):
        signal.setitimer(signal.ITIMER_REAL, _RECHECK_S)
        return
    held, _pending = _pending, None
    raise Stopped(held)


def settle(note: Callable[[str], None]) -> None:
    """The work is done and reported: from here a stop signal undoes nothing, so it raises nothing either
    (raised during the interpreter's exit it would be a traceback from an ``atexit`` callback); the first
    one calls ``note`` with its name. :func:`install_stop_handlers` makes signals stop again (the next job
    of a sweep)."""
    global _pending
    said: list[int] = []

    def after(signum: int, frame: FrameType | None) -> None:
        if not said:
            said.append(signum)
            note(signal.Signals(signum).name)

    _pending = None
    signal.setitimer(signal.ITIMER_REAL, 0)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, after)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, after)
    global _ignore_at_exit
    if not _ignore_at_exit:
        _ignore_at_exit = True
        atexit.register(_ignore_stops)


_ignore_at_exit = False


def _ignore_stops() -> None:
    """The last atexit call (registered last, run first): stop signals are ignored from here to the end of
    the process. The interpreter's finalization puts a signal with a Python handler back to the default
    action, which for SIGTERM ends the process: a stop in that last window would turn a finished run's
    exit status 0 into "killed by SIGTERM". An ignored signal stays ignored."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def install_stop_handlers() -> None:
    """SIGTERM, SIGINT and SIGHUP raise :class:`Stopped` in the main thread (call it from there).

    SIGHUP is what a search started in an ssh session gets when the connection drops; one started
    under ``nohup`` ignores it, and keeps ignoring it.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_stop)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _on_stop)
    signal.signal(signal.SIGALRM, _on_recheck)


def _raise_held() -> None:
    global _pending
    if _holding == 0 and _pending is not None:
        held, _pending = _pending, None
        raise Stopped(held)


@contextlib.contextmanager
def holding(drop: bool = False) -> Iterator[None]:
    """A stop signal inside the block is raised when the block has completed.

    ``drop``: the block is itself the cleanup after an error or a stop (the process is ending anyway):
    a stop held there is dropped rather than raised in place of what is being cleaned up after.
    """
    global _holding, _pending
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
        if drop and _holding == 0:
            _pending = None
    _raise_held()


@contextlib.contextmanager
def committing() -> Iterator[None]:
    """The commit of a finished result (a registered version, a FINISHED run): a stop is held for the
    block and, once the block has completed, on to the end of the enclosing :func:`publishing` block,
    so that a result once committed is also reported. A block that raises holds nothing further."""
    global _holding
    _holding += 1
    latched = False
    try:
        yield
        if _publishing and not _publishing[-1]:
            _publishing[-1] = latched = True
    finally:
        if not latched:
            _holding -= 1
    _raise_held()


@contextlib.contextmanager
def publishing() -> Iterator[None]:
    """Where a committed result is reported (printed, ``result.json``): a stop that arrives after a commit
    inside the block is raised when the block ends, when the result is whole."""
    global _holding
    _publishing.append(False)
    try:
        yield
    finally:
        if _publishing.pop():
            _holding -= 1
    _raise_held()


class HoldingStops:
    """``obj`` whose method calls each run in :func:`holding`: a stop waits for the call to return."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with holding():
                return attr(*args, **kwargs)

        return call
