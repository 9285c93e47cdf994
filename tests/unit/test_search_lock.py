"""The per-resume-key lock: a flock that dies with its holder, and the claim used on remote stores
(exercised here on a real sqlite MLflow store: the claim logic only talks to the MLflow client)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from ckptmerge.tracking import search_lock
from ckptmerge.tracking.search_lock import SearchRunning

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

HOLDER = textwrap.dedent("""
    import sys, time
    from ckptmerge.tracking import search_lock
    lock = search_lock.acquire(sys.argv[1], None, None, "k123")
    lock.attach("RUN42", created=True)
    print("held", flush=True)
    time.sleep(120)
""")


def _holder(uri):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_file_lock_refuses_a_second_holder_and_dies_with_the_first(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = _holder(uri)
    try:
        with pytest.raises(SearchRunning) as err:
            search_lock.acquire(uri, None, None, "k123")
        assert str(err.value) == (
            f"an identical search is already running (run RUN42, owner "
            f"{search_lock.owner().rpartition(':')[0]}:{p.pid}); wait for it or stop it"
        )
        search_lock.acquire(uri, None, None, "other-key").release()  # another key is free
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    lock = search_lock.acquire(uri, None, None, "k123")  # the kernel dropped the dead holder's lock
    assert (tmp_path / "mlflow.db.ckptmerge-k123.lock").exists()
    lock.release()
    search_lock.acquire(uri, None, None, "k123").release()  # and release() frees it within the process


@pytest.mark.parametrize("spelling", ["symlink", "dotdot"])
def test_one_sqlite_store_under_two_names_is_one_lock(tmp_path, spelling):
    """The same database through a symlink (or a path through ``..``) is the same store: one lock."""
    real = tmp_path / "store" / "mlflow.db"
    real.parent.mkdir()
    real.touch()
    if spelling == "symlink":
        (tmp_path / "elsewhere").mkdir()
        other = tmp_path / "elsewhere" / "team.db"
        other.symlink_to(real)
    else:
        (tmp_path / "sub").mkdir()
        other = tmp_path / "sub" / ".." / "store" / "mlflow.db"
    lock = search_lock.acquire(f"sqlite:///{real}", None, None, "k1")
    try:
        lock.attach("RUN1", created=True)
        with pytest.raises(SearchRunning, match="run RUN1"):
            search_lock.acquire(f"sqlite:///{other}", None, None, "k1")
    finally:
        lock.release()
    search_lock.acquire(f"sqlite:///{other}", None, None, "k1").release()


def _store(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    return client, exp


def _search_run(client, exp, key):
    return client.create_run(exp, tags={"ckptmerge.kind": "search", "ckptmerge.resume_hash": key}).info.run_id


def test_claims_racing_on_two_new_runs_elect_one(tmp_path, monkeypatch):
    monkeypatch.setattr(search_lock, "SETTLE_S", 1.0)
    client, exp = _store(tmp_path)
    locks = [search_lock.ClaimLock(client.tracking_uri, client, exp, "k") for _ in range(2)]  # both see no claim
    runs = [_search_run(client, exp, "k") for _ in locks]
    outcome: dict[int, object] = {}

    def take(i):
        try:
            locks[i].attach(runs[i], created=True)
            outcome[i] = "won"
        except SearchRunning as e:
            outcome[i] = e

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [i for i, o in outcome.items() if o == "won"]
    assert len(won) == 1, outcome
    lost = 1 - won[0]
    assert f"(run {runs[won[0]]}, owner " in str(outcome[lost])
    assert client.get_run(runs[lost]).info.status == "KILLED"  # the loser's own run does not stay RUNNING
    # a third search now refuses at once, before creating anything
    with pytest.raises(SearchRunning):
        search_lock.ClaimLock(client.tracking_uri, client, exp, "k")
    locks[won[0]].release()
    client.set_terminated(runs[won[0]], "FINISHED")
    search_lock.ClaimLock(client.tracking_uri, client, exp, "k")  # a finished search frees the key


def test_claim_of_a_dead_process_on_this_host_is_stale(tmp_path):
    import json
    import time

    client, exp = _store(tmp_path)
    run = _search_run(client, exp, "k")
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that no longer runs
    host = search_lock.owner().rpartition(":")[0]
    client.set_tag(
        run,
        search_lock.TAG_CLAIM,
        json.dumps({"token": "t", "owner": f"{host}:{p.pid}", "t": time.time(), "beat": time.time()}),
    )
    assert search_lock.live_claims(client, exp, "k") == []
    client.set_tag(
        run,
        search_lock.TAG_CLAIM,
        json.dumps({"token": "t", "owner": "elsewhere:1", "t": time.time(), "beat": time.time()}),
    )
    assert [r for _, r in search_lock.live_claims(client, exp, "k")] == [run]  # another host: its heartbeat decides
    client.set_tag(
        run,
        search_lock.TAG_CLAIM,
        json.dumps({"token": "t", "owner": "elsewhere:1", "t": 0, "beat": time.time() - search_lock.STALE_S - 1}),
    )
    assert search_lock.live_claims(client, exp, "k") == []
