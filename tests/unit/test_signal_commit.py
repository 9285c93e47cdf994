"""signals.committing() / publishing(): a stop after a commit waits until the result is reported."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ckptmerge import signals
from ckptmerge.errors import Stopped


@pytest.fixture(autouse=True)
def handlers():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)}
    signals.install_stop_handlers()
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    for s, h in old.items():
        signal.signal(s, h)


def _stop_now() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # several recheck intervals: a stop that is not held is raised here


def test_a_stop_after_the_commit_is_raised_when_the_result_is_reported():
    reported = []
    with pytest.raises(Stopped) as e:
        with signals.publishing():
            with signals.committing():
                _stop_now()
            time.sleep(0.05)
            reported.append("result.json")  # still held: the result is written whole
    assert reported == ["result.json"] and e.value.signal_name == "SIGTERM"


def test_a_stop_before_the_commit_is_raised_at_once():
    done = []
    with pytest.raises(Stopped):
        with signals.publishing():
            _stop_now()
            done.append("commit")
    assert done == []


def test_a_commit_outside_publishing_holds_only_its_own_block():
    after = []
    with pytest.raises(Stopped):
        with signals.committing():
            _stop_now()
        after.append("not reached")
    assert after == []


def test_a_pair_under_a_watch_releases_at_its_own_end():
    """The innermost publishing() block takes the hold (a watch's pair), not the whole watch."""
    seen = []
    with pytest.raises(Stopped):
        with signals.publishing():  # the watch
            with signals.publishing():  # one pair
                with signals.committing():
                    pass
            seen.append("pair reported")
            _stop_now()
            seen.append("not reached")
    assert seen == ["pair reported"]


def test_a_second_stop_during_cleanup_is_dropped():
    with signals.holding(drop=True):
        _stop_now()
    time.sleep(0.05)  # nothing pending any more: no stop is raised later either


def test_after_the_result_is_reported_a_stop_is_a_note_not_an_exception():
    """Raised during the interpreter's exit, a stop would be a traceback from an atexit callback."""
    notes = []
    signals.settle(notes.append)
    _stop_now()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    assert notes == ["SIGTERM"]  # said once
    signals.install_stop_handlers()  # the next job of a sweep stops again
    with pytest.raises(Stopped):
        _stop_now()
