"""The trial loop shared by search and compare: propose, merge in place, evaluate, tell, log a child run."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckptmerge.errors import EvaluationError
from ckptmerge.evaluation.doc_scores import DocScores, scores_from_json, scores_json
from ckptmerge.evaluation.racing import Incumbent
from ckptmerge.evaluation.uncertainty import relative_standard_errors
from ckptmerge.resident import ResidentModel
from ckptmerge.search.searchers import Convergence, Point, Proposal, Searcher, SearchExhausted
from ckptmerge.search.space import SearchSpace
from ckptmerge.session import cost
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.executor import Evaluation, Executor, InProcessExecutor
from ckptmerge.tracking import names
from ckptmerge.tracking.datasets import CONTEXT_DEV
from ckptmerge.tracking.mlflow_run import SearchTracker
from ckptmerge.tracking.resume import Unfinished

log = logging.getLogger(__name__)


@dataclass
class Trial:
    index: int
    x: tuple[float, ...]  # the searched point; for a pair, (λ,)
    weights: dict[str, float]  # checkpoint name -> weight, oldest first
    source: str
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0
    objective_se: float | None = None  # bootstrap standard error of the objective over documents
    scores: DocScores | None = field(default=None, repr=False)  # per-document dev scores (None: not at hand)
    draws: Any = field(default=None, repr=False)  # the objective on each bootstrap resample (numpy array)
    # the bill of its dev evaluation (session/cost.py); None: not recorded (a trial resumed from an older run)
    eval_seconds: float | None = None
    docs_evaluated: int | None = None
    tokens_evaluated: int | None = None
    pending: int = 0  # trials in flight when this one was proposed (parallel trials)
    merge_seconds: float | None = None  # the in-place merge alone (where it ran)
    # eval.race: stopped early, significantly worse than the incumbent. Its objective is then an estimate
    # (the incumbent's plus the paired difference on the documents it scored; objective_se that
    # difference's error), its metrics and scores cover only those documents, and it is never the result.
    raced_out: bool = False

    @property
    def lam(self) -> float | None:
        """λ, the weight of the newest checkpoint, when two checkpoints are merged."""
        return list(self.weights.values())[-1] if len(self.weights) == 2 else None

    def as_json(self) -> dict[str, Any]:
        out = {
            "trial": self.index,  # its place in proposal order (parallel trials finish out of order)
            "lambda": self.lam,
            "weights": self.weights,
            "objective": self.objective,
            "objective_se": self.objective_se,
            "proposed_by": self.source,
            "metrics": self.metrics,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 3),
            cost.METRIC_EVAL_SECONDS: None if self.eval_seconds is None else round(self.eval_seconds, 3),
            cost.METRIC_DOCS: self.docs_evaluated,
            cost.METRIC_TOKENS: self.tokens_evaluated,
            names.PARAM_PENDING_AT_PROPOSAL: self.pending,
            names.METRIC_MERGE_SECONDS: None if self.merge_seconds is None else round(self.merge_seconds, 3),
            names.METRIC_RACED_OUT: self.raced_out,
        }
        if self.error:
            out["error"] = self.error
        return out


class TrialLoop:
    """Runs a searcher's trials on the resident model; each trial is a child run of ``parent_run_id``.

    The space may cover only the newest ``space.k`` checkpoints of the resident model (a pair within a
    longer trajectory): older checkpoints then get weight 0.
    """

    def __init__(
        self,
        resident: ResidentModel,
        session: EvalSession,
        tracker: SearchTracker,
        searcher: Searcher,
        space: SearchSpace,
        parent_run_id: str | None = None,
        best_metric_run_id: str | None = None,
    ) -> None:
        self.resident, self.session, self.tracker, self.searcher, self.space = (
            resident,
            session,
            tracker,
            searcher,
            space,
        )
        self.parent_run_id = parent_run_id or tracker.run_id
        self.best_metric_run_id = best_metric_run_id or self.parent_run_id
        self.trials: list[Trial] = []
        self.best: Trial | None = None
        self.stopped_reason: str | None = None  # why the loop ended before the budget, if it did
        self.convergence: Convergence | None = None  # the stop rule's last check (search.stop=converged)
        self.stopped: dict[str, Any] = {}  # result.json's ``stopped``: reason, after, of, criterion
        n = len(resident.cset)
        if space.k > n:
            raise ValueError(f"space over {space.k} checkpoints, resident model has {n}")
        self._names = resident.cset.names[n - space.k :]
        self._pad = n - space.k
        if session.race.enabled:
            searcher.newest_first()  # so that the other initial points race against it

    def full_weights(self, trial: Trial) -> list[float]:
        """The trial's weights over every checkpoint of the resident model (oldest first)."""
        return [0.0] * self._pad + list(trial.weights.values())

    def _record(self, trial: Trial) -> None:
        self.trials.append(trial)
        if trial.raced_out:
            return  # scored on part of the documents: never the incumbent, never the result
        if trial.objective is not None and (self.best is None or trial.objective > self.best.objective):  # type: ignore[operator]
            self.best = trial

    def replay(self, past: list[Any]) -> None:
        """Tell the searcher what a resumed search already evaluated, in order, without evaluating it again.

        The searcher is asked as in the original run, so its random state and proposals follow the
        same path; the recorded point is what is told (a mismatch is logged: it means the runs differ).
        """
        for p in past:
            self._check_convergence()  # as before the original proposal: the streak follows the same path
            prop = self.searcher.ask()
            if max(abs(a - b) for a, b in zip(prop.x, p.x)) > 1e-9:
                log.warning(
                    "Resumed trial %d: the searcher proposes %s, the run recorded %s; using the record",
                    p.index,
                    prop.x,
                    p.x,
                )
            weights = dict(zip(self._names, self.space.weights(p.x)))
            trial = Trial(
                index=p.index,
                x=p.x,
                weights=weights,
                source=prop.source,
                objective=p.objective,
                metrics=p.metrics,
                run_id=p.run_id,
                error=p.error,
                objective_se=p.objective_se,
                eval_seconds=p.eval_seconds,
                docs_evaluated=p.docs_evaluated,
                tokens_evaluated=p.tokens_evaluated,
                raced_out=p.raced_out,
            )
            if p.objective is None:
                self.searcher.mark_failed(p.x)
            elif p.raced_out:  # its stored scores are partial: told its estimate and error, as first
                self._tell(trial)
            else:
                trial.scores = self._stored_scores(p.run_id)
                if trial.scores is not None:
                    trial.draws = self.session.bootstrap.objective_draws(self.session.objective, trial.scores)
                self._tell(trial)
            self._record(trial)
        if past:
            log.info("Resumed: %d trials read back from MLflow, not evaluated again", len(past))

    def _tell(self, trial: Trial) -> None:
        """Tell the searcher the trial with the noise that matters for comparing trials.

        Every trial is scored on the same documents, so much of a score's error (how hard this sample
        of documents happens to be) is shared by all trials and cannot change which λ is best. The
        noise each observation gets is its error relative to the other trials on the same resamples
        (the spread of its draws minus the trials' mean draw), recomputed for all points as they come.

        A raced-out trial has no draws on every document: it is left out of the centre, and its noise is
        the paired standard error of its difference from the incumbent (``objective_se``); the searcher
        never selects it.
        """
        told = [t for t in self.trials if t.objective is not None] + [trial]
        relative = relative_standard_errors([None if t.raced_out else t.draws for t in told])
        relative = [t.objective_se if t.raced_out else r for t, r in zip(told, relative)]
        self.searcher.ses[:] = relative[:-1]
        self.searcher.tell(trial.x, trial.objective, relative[-1], eligible=not trial.raced_out)  # type: ignore[arg-type]

    def _stored_scores(self, run_id: str | None) -> DocScores | None:
        """A past trial's per-document scores from its MLflow artifact (a resumed search), if there."""
        if not run_id:
            return None
        try:
            from pathlib import Path

            local = self.tracker.client.download_artifacts(run_id, names.ARTIFACT_DOC_SCORES)
            return scores_from_json(Path(local).read_text())
        except Exception:  # noqa: BLE001 - an older run without the artifact: the noise is filled in
            return None

    def run(
        self,
        budget: int,
        desc: str = "search",
        executor: Executor | None = None,
        redo: Sequence[Unfinished] = (),
    ) -> list[Trial]:
        """Evaluate trials until ``budget`` (replayed trials count).

        ``executor``: where the evaluations run (default: in this process, one at a time). With several
        workers every one is kept busy: each frees, the searcher is asked for the next point given the
        ones in flight, and results are told as they arrive; trial indices follow the proposals.
        ``redo``: trials a killed asynchronous search left unfinished, run again first at their recorded
        points and indices (each counted once)."""
        from tqdm.auto import tqdm

        from ckptmerge.progress import interactive

        executor = executor or InProcessExecutor(self.resident, self.session)
        bar = tqdm(
            total=budget, initial=min(len(self.trials), budget), desc=desc, unit="trial", disable=not interactive()
        )
        self.stopped = self._stop_record("budget", min(len(self.trials), budget), budget, None)
        in_flight: dict[int, Trial] = {}
        # the next new trial's index: after every finished and unfinished one
        index = max([len(self.trials) + len(redo)] + [t.index + 1 for t in self.trials] + [r.index + 1 for r in redo])
        todo = list(redo)
        proposing = True

        def fill() -> None:
            """Every free worker gets its next trial: one to run again, or the searcher's next point."""
            nonlocal index, proposing
            while executor.in_flight < executor.workers and (todo or (proposing and index < budget)):
                if todo:
                    again = todo.pop(0)
                    trial = self._begin(again.index, Proposal(again.x, again.source), again.pending)
                else:
                    proposal = self._propose(index, budget, [t.x for t in in_flight.values()])
                    if proposal is None:
                        proposing = False
                        break
                    trial = self._begin(index, proposal, len(in_flight))
                    index += 1
                in_flight[trial.index] = trial
                executor.submit(trial.index, self.full_weights(trial), self._incumbent(trial.weights))

        while True:
            fill()
            if not in_flight:
                break
            key, evaluation = executor.next_done()
            trial = in_flight.pop(key)  # type: ignore[call-overload]
            state = self._conclude(trial, evaluation)
            if executor.workers > 1 and trial.error is None:
                # the searcher has been told: the freed worker gets its next trial now, and waits neither
                # for this trial's MLflow logging (metrics, tags, the doc-scores artifact) nor its plot
                self._record(trial)
                fill()
                self._close(trial, evaluation, state)
            else:  # one worker: nothing waits; a failed trial is logged (and may stop the search) first
                self._record(self._close(trial, evaluation, state))
            self._log_line(trial, budget, desc)
            if self.best is not None and self.best.objective is not None:
                self.tracker.log_metrics(
                    {names.METRIC_BEST_OBJECTIVE: self.best.objective},
                    step=len(self.trials) - 1,
                    run_id=self.best_metric_run_id,
                )
                bar.set_postfix(
                    best_newest_weight=f"{list(self.best.weights.values())[-1]:.3f}", best=f"{self.best.objective:.4f}"
                )
            bar.update(1)
            self.stopped.update(after=len(self.trials), criterion=self._criterion())
        bar.close()
        return self.trials

    def _stop_record(self, reason: str, after: int, budget: int, criterion: Any) -> dict[str, Any]:
        """result.json's ``stopped``; ``rule``: the stop rule that applied (search.stop=auto resolved by the
        space: converged or budget)."""
        return {"reason": reason, "after": after, "of": budget, "criterion": criterion, "rule": self.searcher.stop}

    def _propose(self, index: int, budget: int, pending: list[Point]) -> Proposal | None:
        """The searcher's next point, or None when the search stops before its budget (converged,
        or no point left); trials in flight are still waited for."""
        check = self._check_convergence()
        if check is not None and check.converged:
            self.stopped_reason = (
                f"converged after {index} of {budget} evaluations: no point is expected to beat the best "
                f"by {self.searcher.stop_margin:g} paired standard errors ({self.searcher.patience} in a row)"
            )
            self.stopped = self._stop_record("converged", index, budget, self._criterion())
            log.info("Search %s", self.stopped_reason)
            return None
        try:
            return self.searcher.ask(pending=pending)  # none pending: the serial search's proposal
        except SearchExhausted as e:  # the box holds no more points at min_distance: end with these
            self.stopped_reason = f"stopped after {index} of {budget} evaluations: {e}"
            self.stopped = self._stop_record("exhausted", index, budget, self._criterion())
            log.warning("Search %s", self.stopped_reason)
            return None

    def _check_convergence(self) -> Convergence | None:
        check = self.searcher.check_convergence()
        if check is not None:
            self.convergence = check
        return check

    def _criterion(self) -> dict[str, Any] | None:
        """The stop rule's last check, for result.json (None: it never applied)."""
        c = self.convergence
        if c is None:
            return None
        return {
            "max_expected_improvement_in_se": round(c.criterion, 6),
            "stop_margin": self.searcher.stop_margin,
            "streak": c.streak,
            "patience": self.searcher.patience,
        }

    def _log_line(self, trial: Trial, budget: int, desc: str) -> None:
        """One line per trial (what a log keeps of the progress bar)."""
        point = self.space.describe(trial.x)
        if trial.objective is None:
            log.info(
                "%s: trial %d/%d (%s, %s) failed in %.1f s",
                desc,
                trial.index + 1,
                budget,
                point,
                trial.source,
                trial.seconds,
            )
            return
        se = f" ± {trial.objective_se:.5f}" if trial.objective_se is not None else ""
        best = self.best.objective if self.best is not None else trial.objective
        log.info(
            "%s: trial %d/%d (%s, %s) objective %.5f%s, best %.5f, %.1f s",
            desc,
            trial.index + 1,
            budget,
            point,
            trial.source,
            trial.objective,
            se,
            best,
            trial.seconds,
        )

    def _begin(self, index: int, prop: Proposal, pending: int) -> Trial:
        """The trial's child run, opened (params, datasets) before its evaluation is sent off."""
        tracker, session = self.tracker, self.session
        weights = self.space.weights(prop.x)
        named = dict(zip(self._names, weights))
        trial = Trial(index=index, x=prop.x, weights=named, source=prop.source, pending=pending)
        params: dict[str, Any] = {
            names.PARAM_TRIAL: index,
            names.PARAM_PROPOSED_BY: prop.source,
            names.PARAM_PENDING_AT_PROPOSAL: pending,
        }
        params.update(zip(self.space.coordinates, prop.x))  # λ for a pair; u1.., beta, window, shape otherwise
        params.update({names.weight_param(n): w for n, w in named.items()})
        trial.run_id = tracker.start_trial(index, params, parent_run_id=self.parent_run_id)
        tracker.log_datasets(trial.run_id, session.datasets("dev"), CONTEXT_DEV)  # what this trial evaluated
        return trial

    def _conclude(self, trial: Trial, ev: Evaluation) -> dict[str, Any] | None:
        """The trial's objective from its evaluation, told to the searcher (or marked failed: ``trial.error``
        set); the searcher's state right after, for the child run (None for a failed trial)."""
        session, searcher = self.session, self.searcher
        trial.metrics, trial.scores = ev.metrics, ev.scores
        trial.eval_seconds, trial.docs_evaluated, trial.tokens_evaluated = ev.eval_seconds, ev.docs, ev.tokens
        trial.merge_seconds, trial.raced_out = ev.merge_seconds, ev.raced_out
        error, objective = ev.error, float("nan")
        if error is None:
            assert trial.scores is not None  # an evaluation without an error has per-document scores
            if ev.raced_out:  # scored on part of the documents: the estimate against the incumbent
                assert ev.estimate is not None
                objective, trial.objective_se = ev.estimate, ev.estimate_se
            else:
                objective = session.objective(trial.metrics)
            if not math.isfinite(objective):
                error = f"objective is not finite ({objective}) at weights {trial.weights}"
            elif not ev.raced_out:
                trial.draws = session.bootstrap.objective_draws(session.objective, trial.scores)
                trial.objective_se = float(np.std(trial.draws, ddof=1))
        trial.seconds = ev.seconds
        if error is not None:
            trial.error = error
            searcher.mark_failed(trial.x)
            return None
        trial.objective = objective
        assert trial.scores is not None and trial.objective_se is not None
        self._tell(trial)
        return searcher.state()

    def _close(self, trial: Trial, ev: Evaluation, state: dict[str, Any] | None) -> Trial:
        """Log what :meth:`_conclude` found on the trial's child run, and close it."""
        tracker, index = self.tracker, trial.index
        assert trial.run_id is not None
        if trial.error is not None:
            if self._bill(trial):  # what the failed evaluation spent, when it got as far as evaluating
                tracker.log_metrics(self._bill(trial), step=index, run_id=trial.run_id)
            tracker.set_tags({names.TAG_TRIAL_STATUS: "failed", "ckptmerge.error": trial.error[:4000]}, trial.run_id)
            tracker.end_trial(trial.run_id, "FAILED")
            traceback = ev.exception if ev.task_failed and ev.exception is not None else False
            log.warning("Trial %d at %s failed: %s", index, trial.weights, trial.error, exc_info=traceback)
            if ev.task_failed and not self.trials:
                # The task code itself raised (not a NaN score) on the very first evaluation: it does not
                # depend on λ, so every trial would fail the same way; stop now, not after the budget.
                raise EvaluationError(
                    f"the dev tasks fail on the first trial, so every trial would: {trial.error}"
                ) from None
            return trial
        assert trial.objective is not None and trial.scores is not None and state is not None
        metrics: dict[str, float] = {
            names.METRIC_OBJECTIVE: trial.objective,
            names.METRIC_OBJECTIVE_SE: float(trial.objective_se or 0.0),
            **trial.metrics,
            "trial_seconds": trial.seconds,
            **self._bill(trial),
            **({} if trial.merge_seconds is None else {names.METRIC_MERGE_SECONDS: trial.merge_seconds}),
            names.METRIC_RACED_OUT: float(trial.raced_out),
        }
        tracker.log_text(trial.run_id, scores_json(trial.scores), names.ARTIFACT_DOC_SCORES)
        metrics.update({k: v for k, v in state.items() if isinstance(v, float)})
        tracker.log_metrics(metrics, step=index, run_id=trial.run_id)
        tags = {k: v for k, v in state.items() if isinstance(v, str)}
        tracker.set_tags({names.TAG_TRIAL_STATUS: "ok", **tags}, trial.run_id)
        self.log_plot(trial.run_id, index)
        tracker.end_trial(trial.run_id)
        return trial

    def _incumbent(self, weights: dict[str, float]) -> Incumbent | None:
        """What a trial races against (eval.race): the best trial so far, when its per-document scores
        are at hand. None, so every document is scored, for the newest checkpoint alone: the baseline
        of every gain and of the registration decision."""
        best = self.best
        if best is None or best.scores is None or best.objective is None or list(weights.values())[-1] == 1.0:
            return None
        return Incumbent(best.objective, best.scores)

    @staticmethod
    def _bill(trial: Trial) -> dict[str, float]:
        """The trial's child-run metrics of what its evaluation spent (those that are known)."""
        figures = {
            cost.METRIC_EVAL_SECONDS: trial.eval_seconds,
            cost.METRIC_DOCS: trial.docs_evaluated,
            cost.METRIC_TOKENS: trial.tokens_evaluated,
        }
        return {k: float(v) for k, v in figures.items() if v is not None}

    def cost(self, budget: int) -> dict[str, Any]:
        """What this loop's trials spent (``cost`` of result.json; session/cost.py)."""
        full = max((t.docs_evaluated for t in self.trials if t.docs_evaluated), default=None)
        return cost.search_cost(self.trials, budget, full)

    def log_plot(self, run_id: str, index: int) -> None:
        """The GP posterior over λ (pairs) or the objective over λ, as ``gp_posterior.png`` on ``run_id``."""
        tracker, searcher = self.tracker, self.searcher
        if not tracker.log_plots:
            return
        from ckptmerge.tracking.plots import LAMBDA, posterior_figure, trials_figure

        if self.space.dims != 1:
            return  # no 1-D picture of a k-dimensional GP; its state is in the metrics
        post = searcher.posterior()
        title = f"trial {index}: {len(searcher.xs)} evaluations"
        ((lo, hi),) = self.space.bounds()
        axis = (
            LAMBDA
            if self.space.is_pair
            else f"{self.space.coordinates[0]} ({self.space.name} family over {self.space.k} checkpoints)"
        )
        xs = [x[0] for x in searcher.xs]
        if post is not None:
            nxt = searcher.next_point()
            fig = posterior_figure(
                post, xs, searcher.ys, (lo, hi), next_x=nxt[0] if nxt else None, title=title, coordinate=axis
            )
        else:
            fig = trials_figure(xs, searcher.ys, (lo, hi), title=title, coordinate=axis)
        tracker.log_figure(run_id, fig, names.ARTIFACT_PLOT)
