"""Where a trial's evaluation runs: one interface, three places.

The trial loop (session/trials.py) proposes points, logs child runs and tells the searcher; an
:class:`Executor` only merges the resident model in place at given weights and evaluates it
(:func:`evaluate_weights`, the one evaluation call of a trial), returning an :class:`Evaluation`:

- :class:`InProcessExecutor`: this process's resident model, one trial at a time (``runtime=cpu|cuda``);
- the same over DeepSpeed ranks (``runtime=deepspeed``): the resident model is a ZeRO partition and its
  ``apply``/``evaluate`` calls drive the other ranks through the launch's channel, so rank 0 runs it in
  process too (``name`` says ``deepspeed``);
- :class:`ckptmerge.runtime.ray_workers.RayExecutor` (``runtime=ray``): one whole resident model per
  Ray actor, several trials at once.

A job is ``submit(key, weights)`` (a trial), or ``submit_job(key, job)`` for any other work on the resident
model (a compared baseline's merge and scores, session/methods.py): ``job(resident, session)`` runs
where the model is and its picklable result comes back. ``next_done()`` blocks until one job has
finished and returns its key and result (in completion order, which for several workers is not
submission order).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckptmerge.errors import EvaluationError
from ckptmerge.evaluation.doc_scores import DocScores
from ckptmerge.evaluation.racing import Incumbent
from ckptmerge.resident import ResidentModel
from ckptmerge.session.evaluation import EvalSession


@dataclass
class Evaluation:
    """What one evaluation of the resident model at some weights gave (the worker side of a trial)."""

    metrics: dict[str, float] = field(default_factory=dict)
    scores: DocScores | None = None  # per-document dev scores (of the documents evaluated)
    raced_out: bool = False  # eval.race: stopped early, significantly worse than the incumbent
    estimate: float | None = None  # raced out: the incumbent's objective + the paired difference
    estimate_se: float | None = None  # raced out: that difference's paired standard error
    eval_seconds: float | None = None  # the evaluation alone (not the merge); set when it started
    docs: int | None = None
    tokens: int | None = None
    seconds: float = 0.0  # merge + evaluation, where it ran
    merge_seconds: float | None = None  # the in-place merge alone
    error: str | None = None  # an EvaluationError's text: the trial failed
    task_failed: bool = False  # the task code itself raised (not a non-finite score): every trial would
    # the exception itself, in process only (its traceback is logged); never sent between processes
    exception: BaseException | None = field(default=None, repr=False, compare=False)


def evaluate_weights(
    resident: ResidentModel, session: EvalSession, weights: list[float], incumbent: Incumbent | None = None
) -> Evaluation:
    """Merge ``resident`` in place at ``weights`` (every checkpoint, oldest first) and evaluate it on the
    dev tasks: the single evaluation call of a trial, wherever it runs. Under ``eval.race`` with an
    ``incumbent`` the documents are scored chunk by chunk and the evaluation may stop early
    (evaluation/racing.py). An :class:`EvaluationError` is returned as the evaluation's error (the trial
    failed); anything else propagates."""
    out = Evaluation()
    t0 = time.perf_counter()
    try:
        resident.apply(weights)
        t_eval = time.perf_counter()
        out.merge_seconds = t_eval - t0
        try:
            raced = session.evaluate_trial(incumbent)
        finally:  # a failed evaluation was paid for too
            out.eval_seconds = time.perf_counter() - t_eval
        out.metrics, out.scores, out.docs, out.tokens = raced.metrics, raced.scores, raced.docs, raced.tokens
        out.raced_out, out.estimate, out.estimate_se = raced.raced_out, raced.estimate, raced.estimate_se
    except EvaluationError as e:
        out.error, out.task_failed, out.exception = str(e), e.__cause__ is not None, e
    out.seconds = time.perf_counter() - t0
    return out


Job = Callable[[ResidentModel, EvalSession], Any]  # picklable: it may be sent to a Ray worker


class Executor:
    """Runs evaluation jobs; ``workers`` of them at once."""

    name = "base"
    workers = 1

    def submit(self, key: Hashable, weights: list[float], incumbent: Incumbent | None = None) -> None:
        """Evaluate at ``weights``; ``incumbent``: what the trial races against (eval.race), if anything."""
        raise NotImplementedError

    def submit_job(self, key: Hashable, job: Job) -> None:
        """Run ``job(resident, session)`` on a worker's resident model; its result is what next_done gives."""
        raise NotImplementedError

    def next_done(self) -> tuple[Hashable, Any]:
        """Block until a submitted job has finished; its key and result (an :class:`Evaluation` for
        ``submit``, the job's return value for ``submit_job``)."""
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessExecutor(Executor):
    """This process's resident model (a ZeRO partition under ``runtime=deepspeed``: the other ranks
    follow through the channel), one job at a time: a job runs when its result is asked for."""

    def __init__(self, resident: ResidentModel, session: EvalSession) -> None:
        self.resident, self.session = resident, session
        self.name = "deepspeed" if session.partitioned else "in-process"
        self._jobs: list[tuple[Hashable, Job]] = []

    def submit(self, key: Hashable, weights: list[float], incumbent: Incumbent | None = None) -> None:
        w = list(weights)
        self._jobs.append((key, lambda resident, session: evaluate_weights(resident, session, w, incumbent)))

    def submit_job(self, key: Hashable, job: Job) -> None:
        self._jobs.append((key, job))

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def next_done(self) -> tuple[Hashable, Any]:
        key, job = self._jobs.pop(0)
        return key, job(self.resident, self.session)


def run_all(
    executor: Executor,
    jobs: Sequence[tuple[Hashable, list[float] | Job]],
    done: Callable[[Hashable, Any], None],
    started: Callable[[Hashable], None] | None = None,
) -> None:
    """Run independent jobs (a pilot's singles and pairs: weights to evaluate; a comparison's baselines:
    :data:`Job`), every worker busy until all are done. ``started`` is called in the driver as each
    one is sent off, ``done`` as each one finishes (in completion order)."""
    todo = list(jobs)

    def fill() -> None:
        while todo and executor.in_flight < executor.workers:
            key, what = todo.pop(0)
            if started is not None:
                started(key)
            if callable(what):
                executor.submit_job(key, what)
            else:
                executor.submit(key, what)

    fill()
    while executor.in_flight:
        key, result = executor.next_done()
        fill()  # the freed worker gets its next job before the driver logs this one
        done(key, result)
