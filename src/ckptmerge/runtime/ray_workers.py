"""``runtime=ray``: trials in parallel, one whole resident model per Ray actor (docs/parallel.md).

The driver (this process) keeps the searcher, MLflow and the finish; each :class:`TrialWorker` actor
builds its own resident model once from the checkpoints' paths (shared storage: tensors never pass
through the driver) and evaluates trials in place, returning the metrics and per-document scores.

Ray's own conventions: an empty ``runtime.address`` starts a local instance that :meth:`RayExecutor.close`
stops; ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins a cluster started with ``ray start --head``,
where closing kills only this run's actors. A worker that dies (a lost node, the OOM killer) is
restarted by Ray (``max_restarts``) and the driver submits its trial again: it runs once more and is
counted once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Hashable, Iterator
from typing import Any

from ckptmerge import signals
from ckptmerge.config import Config, RuntimeConfig
from ckptmerge.errors import ConfigError, EvaluationError
from ckptmerge.evaluation.racing import Incumbent
from ckptmerge.session.executor import Evaluation, Executor, Job, evaluate_weights

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # a worker process that dies is started again this many times (Ray's max_restarts)
MAX_RESUBMITS = 3  # a trial whose worker died runs again at most this many times
RESTART_S = 600  # how long a restarting worker may take to come back (it loads its model again)
POLL_S = 1.0  # ray.wait returns this often, so that a stop (SIGTERM) is raised promptly in the driver
CPU_WORKERS = 2  # runtime.workers=null on the CPU


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host or "127.0.0.1", int(port)


def check_address(runtime: RuntimeConfig, timeout_s: float = 5.0) -> None:
    """Fail in one line (exit 2) when ``runtime.address`` names a cluster that cannot be reached: before
    any work, and in seconds (``ray.init`` itself waits a minute on an address where no one listens)."""
    address = runtime.address
    if runtime.backend != "ray" or not address:
        return
    if address == "auto":
        from ray._private.services import find_gcs_addresses

        if not os.environ.get("RAY_ADDRESS") and not find_gcs_addresses():
            raise ConfigError(
                "runtime.address=auto: no running Ray cluster on this machine (start one with `ray start "
                "--head`, or name it: runtime.address=HOST:PORT)"
            )
        return
    hp = _host_port(address)
    if hp is None:
        raise ConfigError(f"runtime.address must be empty, auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection(hp, timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"runtime.address={address}: no Ray cluster answers there ({e.strerror or e})") from None


def connect(runtime: RuntimeConfig) -> bool:
    """Start (empty address) or join a Ray instance; True when this process started it (and so stops
    it). Ray's own SIGTERM handler (``ray.init`` installs one) is replaced by ours again afterwards."""
    import ray

    check_address(runtime)
    if ray.is_initialized():
        return False
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if runtime.address:
            try:
                ray.init(address=runtime.address, log_to_driver=False)
            except ConnectionError as e:
                cause = f"{e} {e.__cause__ or ''}"
                why = (
                    "it refuses this process's auth token: run with the cluster's RAY_AUTH_MODE (e.g. "
                    "RAY_AUTH_MODE=token) and its token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
                    if "Authentication" in cause or "AuthToken" in cause
                    else str(e).splitlines()[0]
                )
                raise ConfigError(f"runtime.address={runtime.address}: cannot join the Ray cluster: {why}") from None
            return False
        ray.init(
            # "local": a new instance of our own even where RAY_ADDRESS is set or a `ray start` cluster runs
            # on this machine (a bare ray.init() would join that one, and our exit would not stop it)
            address="local",
            num_cpus=max(os.cpu_count() or 1, runtime.workers or CPU_WORKERS),
            include_dashboard=False,
            log_to_driver=False,
        )
        return True
    finally:
        for s, h in before.items():
            if h is not None:
                signal.signal(s, h)


def worker_count(runtime: RuntimeConfig) -> int:
    """``runtime.workers``, or one per GPU of the Ray instance on CUDA, or 2 on the CPU."""
    if runtime.workers:
        return runtime.workers
    if runtime.device == "cuda":
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise ConfigError("runtime.device=cuda with runtime=ray, but the Ray instance has no GPU")
        return gpus
    return CPU_WORKERS


class TrialWorker:
    """One Ray actor: its own resident model, built once, evaluated in place at each trial's weights.

    ``study``: False builds what a search resolves (its pair or space); True, a study's whole
    trajectory (pilot, compare), or its newest ``last`` checkpoints. ``threads``: torch's intra-op
    threads (on the CPU, this worker's share of the cores)."""

    def __init__(self, cfg: Config, study: bool, last: int | None, threads: int | None) -> None:
        from ckptmerge.runtime import seed_everything
        from ckptmerge.session.evaluation import EvalSession
        from ckptmerge.session.setup import newest_of, resolve_search_sources, resolve_sources

        seed_everything(cfg.search.seed, threads)
        # the driver built any embedded trajectory and checked the checkpoints' content already
        if not study:
            sources = resolve_search_sources(cfg.model, cfg.eval, cfg.search.space, progress=False, check=False)
        else:
            sources = resolve_sources(cfg.model, cfg.eval, all_checkpoints=True, progress=False, check=False)
            if last is not None:
                sources = newest_of(sources, last)
        self.session, self.resident = EvalSession.with_resident(
            cfg.eval, cfg.search.seed, cfg.runtime, cfg.merge, sources
        )

    def evaluate(self, weights: list[float], incumbent: Incumbent | None = None) -> Evaluation:
        out = evaluate_weights(self.resident, self.session, weights, incumbent)
        out.exception = None  # its traceback stays here; the text and the kind go back
        return out

    def run_job(self, job: Job) -> Any:
        """Any other work on this worker's resident model (a compared baseline: session/methods.py)."""
        return job(self.resident, self.session)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """``runtime.workers`` :class:`TrialWorker` actors; each job goes to a free one."""

    name = "ray"

    def __init__(self, cfg: Config, study: bool = False, last: int | None = None) -> None:
        import ray

        runtime = cfg.runtime
        # a process that holds its own Ray connection across several executors (a watch: ray_session)
        # keeps it; otherwise this executor connects and disconnects
        self._owns_connection = not ray.is_initialized()
        connect(runtime)
        self.workers = worker_count(runtime)
        gpu = runtime.device == "cuda"
        threads = runtime.threads or (None if gpu else max(1, (os.cpu_count() or 1) // self.workers))
        remote = ray.remote(TrialWorker).options(
            num_gpus=1 if gpu else 0,
            num_cpus=1,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # the driver re-submits a lost trial itself, and counts it once
        )
        self.actors: list[Any] = [remote.remote(cfg, study, last, threads) for _ in range(self.workers)]
        self._idle = list(range(self.workers))
        # ref -> key, actor, the actor's method and its arguments, tries
        self._jobs: dict[Any, tuple[Hashable, int, str, tuple, int]] = {}
        self._closed = False
        log.info(
            "Ray: %d workers (%s, %s), %s",
            self.workers,
            "one GPU each" if gpu else f"{threads} torch threads each",
            runtime.address or "a local instance",
            ray.get_runtime_context().get_node_id()[:8],
        )

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def submit(self, key: Hashable, weights: list[float], incumbent: Incumbent | None = None) -> None:
        # the incumbent's per-document scores go with the job: the worker races against what the driver
        # knew when it proposed the trial
        self._send(key, "evaluate", (list(weights), incumbent), 0)

    def submit_job(self, key: Hashable, job: Job) -> None:
        self._send(key, "run_job", (job,), 0)

    def _send(self, key: Hashable, method: str, args: tuple, tries: int) -> None:
        if not self._idle:
            raise RuntimeError("no free worker: wait for next_done() first")
        actor = self._idle.pop(0)
        ref = getattr(self.actors[actor], method).remote(*args)
        self._jobs[ref] = (key, actor, method, args, tries)

    def next_done(self) -> tuple[Hashable, Any]:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        while True:
            with signals.holding():  # a stop is raised here, after the wait, not inside Ray's own code
                ready, _ = ray.wait(list(self._jobs), num_returns=1, timeout=POLL_S)
            if not ready:
                continue  # a signal handler runs between waits
            ref = ready[0]
            key, actor, method, args, tries = self._jobs.pop(ref)
            try:
                result = ray.get(ref)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
                if tries >= MAX_RESUBMITS:
                    raise EvaluationError(
                        f"Ray worker {actor} died {tries + 1} times evaluating trial {key}: {str(e).splitlines()[0]}"
                    ) from None
                log.warning("Ray worker %d died during trial %s; Ray restarts it and the trial runs again", actor, key)
                self._wait_restarted(actor)
                self._idle.insert(0, actor)
                self._send(key, method, args, tries + 1)
                continue
            self._idle.append(actor)
            return key, result

    def _wait_restarted(self, actor: int) -> None:
        """Block until Ray has restarted worker ``actor`` (it builds its model again): a task sent to an
        actor that is still restarting fails at once, which would count as one more death."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + RESTART_S
        while True:
            try:
                with signals.holding():
                    ray.get(self.actors[actor].pid.remote(), timeout=POLL_S * 5)
                return
            except (ActorUnavailableError, GetTimeoutError, RayActorError) as e:
                if time.monotonic() > deadline:
                    raise EvaluationError(
                        f"Ray worker {actor} did not come back within {RESTART_S} s: {str(e).splitlines()[0]}"
                    ) from None
            time.sleep(POLL_S)

    def close(self) -> None:
        """Kill this run's actors; stop the Ray instance when this process started it."""
        if self._closed:
            return
        self._closed = True
        import ray

        if not ray.is_initialized():
            return
        with signals.holding(drop=True):  # the cleanup after a stop: a second signal must not cut it short
            for a in self.actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            # a local instance stops with it; a joined cluster goes on running (only our actors were killed)
            if self._owns_connection:
                ray.shutdown()


@contextlib.contextmanager
def ray_session(runtime: RuntimeConfig) -> Iterator[None]:
    """One Ray connection for a process that runs several executors in turn (``action=watch``: one
    search per pair): a local instance is started once, not once per pair, and stopped at the end (or on
    a stop signal); each executor still kills its own actors. Nothing happens unless ``runtime=ray``."""
    if runtime.backend != "ray":
        yield
        return
    import ray

    owns = not ray.is_initialized()
    connect(runtime)
    try:
        yield
    finally:
        if owns and ray.is_initialized():
            with signals.holding(drop=True):  # the cleanup after a stop: a second signal must not cut it short
                ray.shutdown()
