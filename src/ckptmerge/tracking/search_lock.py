"""One search per resume key at a time on one tracking store.

Two identical searches started together would both evaluate every trial and register two identical
versions; the same command run twice after a crash would resume the search in one process and start a
fresh one beside it in the other. So a search takes a lock named by its resume key right after the key
is known (before it looks for a run to resume, before any trial) and holds it until it ends; a second
search with the same key on the same store refuses with one line naming the first.

Local stores (``sqlite:///DB``, a ``file:`` / plain folder store): an advisory ``fcntl.flock`` on
``DB.ckptmerge-<resume_hash>.lock`` beside the database (``.ckptmerge-<hash>.lock`` inside a folder
store), at DB's real path: a symlink to the database, or a path through ``..``, names the same lock.
A database that an ``mlflow server`` serves is refused as a direct ``sqlite:///`` store (see
:class:`ckptmerge.tracking.mlflow_run.SearchTracker`): its searches lock through the server. The
kernel drops a flock when its holder dies, SIGKILL included, so a crashed search never leaves a
stale lock behind. The file holds the owner (host:pid) and the parent run id, for the
refusal's line; the lock files stay (a few bytes per key).

Remote stores (http, https, postgresql, ...): no file both processes can lock, so a *claim* tag
``ckptmerge.claim`` on the parent run (in the store itself: two URLs of one server share it),
``{"token", "owner", "t", "beat"}``, refreshed by a heartbeat thread
every :data:`BEAT_S` seconds. A claim is live while its run is RUNNING and its holder is alive:
on this host the owner's pid must exist, on another its heartbeat must be newer than :data:`STALE_S`.
Taking it: refuse when a live claim with this key exists; write ours on the run; wait
:data:`SETTLE_S`; read all live claims again and win only if ours is the oldest (``t``, then token),
else end our run (when we created it) and refuse. Two racing searches read the same claims after the
wait and agree on one winner. The race window, honestly: this holds when a write becomes visible to
the other process within ``SETTLE_S`` and the hosts' clocks differ by less than that; a claim
overwritten on a resumed run after our check (a second resumer whose pre-check read the store before
our write and whose own write came more than ``SETTLE_S`` later) is not seen. A dead holder on another
host blocks its key until its heartbeat is ``STALE_S`` old.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ckptmerge.errors import TrackingError
from ckptmerge.liveness import process_alive
from ckptmerge.tracking import names
from ckptmerge.tracking.resume import TAG_OWNER, TAG_RESUME_HASH, owner

log = logging.getLogger(__name__)

TAG_CLAIM = "ckptmerge.claim"
SETTLE_S = 2.0
BEAT_S = 30.0
STALE_S = 120.0
_RUN_ID_WAIT_S = 5.0  # how long a refused search waits for the holder to name its run in the lock file


class SearchRunning(TrackingError):
    """A search with the same resume key is running on this store."""

    def __init__(self, run_id: str | None, owner: str | None) -> None:
        super().__init__(
            f"an identical search is already running (run {run_id or 'not created yet'}, "
            f"owner {owner or 'unknown'}); wait for it or stop it"
        )


def local_lock_path(uri: str, resume_hash: str) -> Path | None:
    """The lock file of a local store, or None for a remote one."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri[len("sqlite:///") :] in ("", ":memory:"):
            return None  # in-memory: one process anyway
        # the real file: a symlink to it, or the same path spelled with .. , is the same store and lock
        db = Path(uri[len("sqlite:///") :]).resolve()
        return db.with_name(f"{db.name}.ckptmerge-{resume_hash}.lock")
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri).resolve() / f".ckptmerge-{resume_hash}.lock"
    return None


class SearchLock:
    """The lock a search holds; :meth:`attach` once its parent run exists, :meth:`release` when it ends."""

    def attach(self, run_id: str, created: bool) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class FileLock(SearchLock):
    def __init__(self, path: Path) -> None:
        import fcntl

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: opening must not wipe the holder's note before we know we are not it
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note = self._wait_for_note()
            os.close(self._fd)
            self._fd = None
            raise SearchRunning(note.get("run_id"), note.get("owner")) from None
        self.owner = owner()
        self._write({"owner": self.owner, "run_id": None})

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}  # caught mid-write: the line says less

    def _wait_for_note(self) -> dict[str, Any]:
        """The holder's note; it names its run a moment after taking the lock, so wait briefly for that."""
        deadline = time.monotonic() + _RUN_ID_WAIT_S
        note = self._read()
        while not note.get("run_id") and time.monotonic() < deadline:
            time.sleep(0.2)
            note = self._read()
        return note

    def _write(self, note: dict[str, Any]) -> None:
        data = json.dumps(note).encode()
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def attach(self, run_id: str, created: bool) -> None:
        self._write({"owner": self.owner, "run_id": run_id})

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _parse_claim(value: str | None) -> dict[str, Any] | None:
    try:
        claim = json.loads(value or "")
    except ValueError:
        return None
    return claim if isinstance(claim, dict) and "token" in claim else None


def _claim_live(claim: dict[str, Any], now: float) -> bool:
    host, _, pid = str(claim.get("owner", "")).rpartition(":")
    if host == socket.gethostname():
        return pid.isdigit() and process_alive(int(pid))
    return now - float(claim.get("beat", 0)) < STALE_S


def claim_tag_live(value: str | None, now: float) -> bool:
    """Whether a run's ``ckptmerge.claim`` tag names a live holder (for callers outside the lock, e.g. a watcher)."""
    claim = _parse_claim(value)
    return claim is not None and _claim_live(claim, now)


def live_claims(client: Any, experiment_id: str, resume_hash: str) -> list[tuple[dict[str, Any], str]]:
    """Live claims on RUNNING search runs with this key, oldest first, as ``(claim, run_id)``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_RESUME_HASH}` = '{resume_hash}' and tags.`{names.TAG_KIND}` = 'search' "
            "and attributes.status = 'RUNNING'"
        ),
        max_results=100,
    )
    now = time.time()
    found = []
    for run in runs:
        claim = _parse_claim(run.data.tags.get(TAG_CLAIM))
        if claim is not None and _claim_live(claim, now):
            found.append((claim, run.info.run_id))
    return sorted(found, key=lambda cr: (float(cr[0].get("t", 0)), str(cr[0]["token"])))


class ClaimLock(SearchLock):
    def __init__(self, uri: str, client: Any, experiment_id: str, resume_hash: str) -> None:
        self.uri, self.client, self.experiment_id, self.resume_hash = uri, client, experiment_id, resume_hash
        held = live_claims(client, experiment_id, resume_hash)
        if held:
            raise SearchRunning(held[0][1], held[0][0].get("owner"))
        self.claim = {"token": uuid.uuid4().hex, "owner": owner(), "t": time.time()}
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _write(self, client: Any) -> None:
        client.set_tag(self.run_id, TAG_CLAIM, json.dumps({**self.claim, "beat": time.time()}))

    def attach(self, run_id: str, created: bool) -> None:
        self.run_id = run_id
        self._write(self.client)
        time.sleep(SETTLE_S)  # a racing search's claim becomes visible; both then read the same claims
        held = live_claims(self.client, self.experiment_id, self.resume_hash)
        if not held or held[0][0]["token"] != self.claim["token"]:
            winner = held[0] if held else ({}, None)
            if (
                created and winner[1] != run_id
            ):  # ours, for nothing (a racing resumer may have won on it: then it is theirs)
                self.client.set_tag(run_id, names.TAG_ERROR, "an identical search was already running")
                self.client.set_terminated(run_id, status="KILLED")
            elif (_parse_claim(self.client.get_run(run_id).data.tags.get(TAG_CLAIM)) or {}).get("token") == self.claim[
                "token"
            ]:
                self.client.delete_tag(run_id, TAG_CLAIM)  # ours, on a run another claim's holder may resume
            self.run_id = None
            raise SearchRunning(winner[1], winner[0].get("owner"))
        self.client.set_tag(run_id, TAG_OWNER, self.claim["owner"])  # a losing resumer may have written its own
        self._beat = threading.Thread(target=self._heartbeat, name="ckptmerge-claim", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        # its own client: the tracker's holds stop signals around calls, a state the main thread owns
        from mlflow.tracking import MlflowClient

        client = None
        while not self._stop.wait(BEAT_S):
            try:
                client = client or MlflowClient(self.uri)
                self._write(client)
            except Exception as e:  # noqa: BLE001 - a missed beat only ages the claim
                log.warning("could not refresh the search's claim on run %s: %s", self.run_id, str(e)[:200])

    def release(self) -> None:
        self._stop.set()
        # the run ends (FINISHED/FAILED/KILLED) with the search, which already frees the key; the tag
        # stays as a record of who ran it


def acquire(uri: str, client: Any, experiment_id: str, resume_hash: str) -> SearchLock:
    """Take the lock for this resume key on this store, or raise :class:`SearchRunning`."""
    path = local_lock_path(uri, resume_hash)
    if path is not None:
        try:
            import fcntl  # noqa: F401
        except ImportError:  # not POSIX: fall back to the claim
            path = None
    if path is not None:
        return FileLock(path)
    return ClaimLock(uri, client, experiment_id, resume_hash)
