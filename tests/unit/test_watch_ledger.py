"""The watch's state in MLflow, on a real sqlite store: which pairs are done, running, and which watch to continue."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from ckptmerge.config import config_from_dict
from ckptmerge.watch import ledger

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    client = MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")
    return client, client.create_experiment("watch-ledger")


def _search(client, exp, key, pair, owner, claim=None):
    tags = {
        "ckptmerge.kind": "search",
        ledger.TAG_WATCH_KEY: key,
        "ckptmerge.checkpoints": pair,
        "ckptmerge.owner": owner,
    }
    if claim is not None:
        tags["ckptmerge.claim"] = json.dumps(claim)
    return client.create_run(exp, tags=tags).info.run_id


def test_a_pair_is_running_while_its_searcher_lives(store):
    client, exp = store
    mine = _search(client, exp, "k1", "a,b", f"{HOST}:{os.getpid()}")
    assert ledger.running_search(client, exp, "k1", "a,b") == mine
    assert ledger.running_search(client, exp, "k1", "b,c") is None  # another pair
    assert ledger.running_search(client, exp, "k2", "a,b") is None  # another watch key
    client.set_terminated(mine, "KILLED")
    assert ledger.running_search(client, exp, "k1", "a,b") is None


def test_on_another_host_a_fresh_claim_heartbeat_is_what_counts(store):
    client, exp = store
    claim = {"token": "t", "owner": "elsewhere:1", "t": time.time(), "beat": time.time()}
    fresh = _search(client, exp, "k3", "a,b", "elsewhere:1", claim)
    assert ledger.running_search(client, exp, "k3", "a,b") == fresh
    stale = _search(client, exp, "k4", "a,b", "elsewhere:1", {**claim, "beat": time.time() - 3600})
    assert stale and ledger.running_search(client, exp, "k4", "a,b") is None


def test_a_pair_is_done_only_when_its_search_finished(store):
    client, exp = store
    dead = _search(client, exp, "k5", "a,b", f"{HOST}:999999999")  # its process is gone: not running, not done
    assert ledger.running_search(client, exp, "k5", "a,b") is None
    assert ledger.finished_search(client, exp, "k5", "a,b") is None
    client.set_terminated(dead, "FINISHED")
    assert ledger.finished_search(client, exp, "k5", "a,b") == dead
    assert ledger.finished_search(client, exp, "k6", "a,b") is None


def test_the_newest_unfinished_watch_whose_process_is_gone_is_continued(store):
    client, exp = store
    tags = {"ckptmerge.kind": "watch", ledger.TAG_WATCH_KEY: "w1"}
    old = client.create_run(exp, tags={**tags, "ckptmerge.owner": f"{HOST}:999999999"}).info.run_id
    assert ledger.resumable_watch(client, exp, "w1") == old
    alive = client.create_run(exp, tags={**tags, "ckptmerge.owner": f"{HOST}:{os.getpid()}"}).info.run_id
    assert ledger.resumable_watch(client, exp, "w1") == old  # a live watcher's run is not taken over
    client.set_terminated(alive, "FINISHED")
    time.sleep(0.01)
    newest = client.create_run(exp, tags={**tags, "ckptmerge.owner": f"{HOST}:{os.getpid()}"}).info.run_id
    client.set_terminated(newest, "FINISHED")
    assert ledger.resumable_watch(client, exp, "w1") is None  # the last watch ended by itself


def test_the_watch_key_follows_what_changes_a_search():
    def key(**over):
        base = {"action": "watch", "model": {"name": "local", "source": "local"}, "watch": {"dir": "/d"}}
        for section, values in over.items():
            base[section] = {**base.get(section, {}), **values}
        return ledger.watch_key(config_from_dict(base).to_dict(), "/runs/ckpts")

    assert key() == key(watch={"poll_s": 5, "idle_exit_s": 60}) == key(search={"budget": 20})
    # when to stop spending the budget is not part of a search's identity either (a watch started before
    # search.stop existed keeps its key)
    assert key() == key(search={"stop": "budget"}) == key(search={"stop_margin": 1.0, "patience": 4})
    assert key() != key(eval={"limit": 10})
    assert key() != key(search={"alpha": 0.5})
