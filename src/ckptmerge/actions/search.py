"""``action=search``: find λ for a pair of checkpoints with Bayesian optimisation, then write, verify,
report and register the best merge.

Flow: checks (tracking, tasks, checkpoints) → resident model → trials (merge in place, evaluate, tell,
log a child run) → best merge written atomically → reloaded and re-scored → test report → registry →
``result.json``. If any step fails, the parent run is marked FAILED, the written merge is removed and
nothing is registered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ckptmerge import signals
from ckptmerge.checkpoints.atomic import check_target, folder_owner, refuse_inputs
from ckptmerge.checkpoints.writer import check_space, merged_size
from ckptmerge.config import Config
from ckptmerge.errors import CheckpointError, EvaluationError
from ckptmerge.evaluation.doc_scores import scores_json
from ckptmerge.interop import folder_files, update_card
from ckptmerge.interop.facts import MergeFacts, checkpoint_entries, floating_dtype
from ckptmerge.merge import searchable
from ckptmerge.resident import ResidentModel
from ckptmerge.runtime import seed_everything
from ckptmerge.runtime.distributed import Channel
from ckptmerge.search.searchers import Searcher, make_searcher, warm_start_left_out
from ckptmerge.session import cost, evidence, finish
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.executor import Executor
from ckptmerge.session.executors import make_executor
from ckptmerge.session.finish import HeldOutReport, Selection, Written
from ckptmerge.session.register import PendingVersion, log_for_registry, published_by, write_and_verify
from ckptmerge.session.setup import Sources, local_checkpoint_folders, resolve_search_sources, search_space
from ckptmerge.session.trials import Trial, TrialLoop
from ckptmerge.tracking import names, resume, search_lock
from ckptmerge.tracking.datasets import CONTEXT_DEV, CONTEXT_TEST
from ckptmerge.tracking.description import run_note, version_description
from ckptmerge.tracking.mlflow_run import SearchTracker
from ckptmerge.watch import warm

log = logging.getLogger(__name__)

OWNER_SEARCH = "search:"  # merged folders record "search:RUN_ID" as their owner


class SearchRun:
    """One search from checks to registry; :meth:`run` returns the ``result.json`` dict."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        cwd: Path,
        config_yaml: str = "",
        tags: dict[str, str] | None = None,
        on_locked: Callable[[SearchTracker], None] | None = None,
        channel: Channel | None = None,
        previous_result: dict[str, Any] | None = None,
    ) -> None:
        """``tags``: extra tags on the parent run (a watch links its searches so). ``on_locked``: called
        once this search holds its key's lock, before it looks for a run to resume; it may raise to
        stop the search there (a watch checks, under the lock, that no one finished the pair meanwhile).
        ``channel``: under ``runtime=deepspeed``, the launch's command channel to the other ranks.
        ``previous_result``: the ``result.json`` of the previous pair's search, whose chosen point becomes
        one more initial proposal (``watch.warm_start``, :mod:`ckptmerge.watch.warm`)."""
        self.cfg = cfg
        self.channel = channel
        self.extra_tags = dict(tags or {})
        self.on_locked = on_locked
        self.previous_result = previous_result
        self.warm_point: tuple[float, ...] | None = None
        self.warm_left_out: list[str] = []
        self.run_dir = Path(run_dir).resolve()
        self.cwd = Path(cwd)
        self.config_yaml = config_yaml
        self.output_dir = (
            Path(cfg.merge.output_dir).expanduser().resolve() if cfg.merge.output_dir else self.run_dir / "merged"
        )
        self.trials: list[Trial] = []
        self._written = False
        self._committed = False  # the finish committed (see _commit): nothing undoes it from then on
        self._lock: search_lock.SearchLock | None = None
        self.redo: list[resume.Unfinished] = []  # a resumed parallel search's unfinished trials
        self.workers = 1  # trials evaluated at once

    # -- the whole thing ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:  # the process may go on (a multirun sweep's next job): the key is free again
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        seed_everything(cfg.search.seed, cfg.runtime.threads)
        searchable(cfg.merge.method)  # unknown names, or a method trials cannot run, fail before anything expensive
        # An output folder that an earlier search wrote may be that search's own, to be resumed; which
        # search is known once the parent run is, so its folder is checked again then.
        refuse_inputs(
            self.output_dir, local_checkpoint_folders(cfg.model)
        )  # before "exists", which would advise overwrite
        earlier = folder_owner(self.output_dir)
        check_target(
            self.output_dir,
            cfg.merge.overwrite,
            owner=earlier if earlier and earlier.startswith(OWNER_SEARCH) else None,
        )
        tracker = SearchTracker(cfg.tracking, self.cwd)  # unreachable tracking fails here, in seconds
        sources = resolve_search_sources(cfg.model, cfg.eval, cfg.search.space)
        cset = sources.cset
        refuse_inputs(self.output_dir, [c.folder for c in cset.checkpoints])
        # The merge is written after the whole budget: a disk too small for it fails now, not then.
        out_dtype = None if cfg.merge.dtype == "auto" else getattr(torch, cfg.merge.dtype)
        check_space(self.output_dir, merged_size(cset.newest.reader.meta(), out_dtype))
        self.space, initial = search_space(cfg.search, cfg.compare, len(cset))
        self.warm_point, initial = warm.initial_for(
            self.space, initial, self.previous_result, float(cfg.search.min_distance)
        )
        self.warm_left_out = warm_start_left_out(initial, cfg.search.budget)
        if self.warm_left_out:  # the result is then not checked against those baselines: say so
            print(
                f"warning: search.budget={cfg.search.budget} cannot hold the warm start of "
                f"search/space={self.space.name} ({len(initial or [])} points): baselines "
                f"{', '.join(self.warm_left_out)} are left out and the result is not checked against them; "
                f"set search.budget>={len(initial or [])} to evaluate them",
                file=sys.stderr,
            )
        searcher = make_searcher(cfg.search, self.space, initial)  # e.g. grid over k > 2 is refused here
        # unknown tasks/metrics and test-split dev tasks fail before the model is built
        session, resident = EvalSession.with_resident(
            cfg.eval, cfg.search.seed, cfg.runtime, cfg.merge, sources, self.channel
        )
        key = self._resume_key(sources, session, resident)
        # one search per key on this store: taken before looking for a run to resume, so two resumes
        # of one crashed search serialise instead of one resuming and the other starting afresh
        self._lock = search_lock.acquire(tracker.uri, tracker.client, tracker.experiment_id, resume.key_hash(key))
        if self.on_locked is not None:
            self.on_locked(tracker)
        done = self._finished_before(tracker, key, earlier)
        if done is not None:
            return done
        resume_id = self._resumable(tracker, key)
        run_id = tracker.start(
            run_name=f"search-{'-'.join(cset.names)}",
            config=cfg.to_dict(),
            config_yaml=self.config_yaml,
            checkpoints=[{"name": c.name, **c.identity()} for c in cset.checkpoints],
            tags={
                names.TAG_OBJECTIVE: session.objective.describe(),
                names.TAG_CHECKPOINTS: ",".join(cset.names),
                resume.TAG_RESUME_HASH: resume.key_hash(key),
                resume.TAG_OWNER: resume.owner(),
                **self.extra_tags,
            },
            resume_run_id=resume_id,
        )
        # (a loser of a remote store's claim race ends its own run KILLED here, outside finishing())
        self._lock.attach(run_id, created=not resume_id and not os.environ.get("MLFLOW_RUN_ID"))
        # From here the parent run is ours: any end (error, signal) closes it through finishing().
        with tracker.finishing():
            self.owner = f"{OWNER_SEARCH}{run_id}"
            past: list[resume.PastTrial] = []
            if resume_id and cfg.runtime.backend == "ray":  # trials finish out of order: keep every finished one
                past, self.redo = resume.read_parallel_trials(
                    tracker.client, tracker.experiment_id, run_id, self.space.coordinates
                )
                log.info("Resuming search %s: %d trials done, %d to run again", run_id, len(past), len(self.redo))
            elif resume_id:
                past = resume.read_trials(tracker.client, tracker.experiment_id, run_id, self.space.coordinates)
                log.info("Resuming search %s: %d trials done", run_id, len(past))
            else:
                tracker.log_text(
                    run_id, json.dumps(key, indent=2, sort_keys=True, default=str), resume.ARTIFACT_RESUME_KEY
                )
            log.info("MLflow parent run %s; objective %s", run_id, session.objective.describe())
            self.facts = self._facts(tracker, sources, session)
            tracker.describe(run_note(self.facts, running=True))
            tracker.log_datasets(run_id, session.datasets("dev"), CONTEXT_DEV)
            check_target(self.output_dir, cfg.merge.overwrite, owner=self.owner)  # before any trial
            try:
                result = self._search_and_register(tracker, sources, session, resident, searcher, past)
            except BaseException as e:
                # a merge whose report or registration failed or stopped (also one that landed in place a
                # moment before the stop, which its owner file tells)
                if not self._committed and (self._written or published_by(self.output_dir, self.owner)):
                    shutil.rmtree(self.output_dir, ignore_errors=True)
                gone = [c.folder for c in cset.checkpoints if not Path(c.folder).is_dir()]
                if gone and isinstance(e, Exception):  # what failed is then a symptom: name the cause
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise CheckpointError(
                        f"checkpoint folder {gone[0]} disappeared during the search ({first[:200]}); "
                        "nothing was written or registered"
                    ) from e
                raise
        return result

    def _facts(self, tracker: SearchTracker, sources: Sources, session: EvalSession) -> MergeFacts:
        """What is known before the first trial; the result's facts are added as they are learnt."""
        c, cset = self.cfg, sources.cset
        suites = [session.dev] + ([session.test] if session.test else [])
        return MergeFacts(
            checkpoints=checkpoint_entries(cset),
            weights={},
            method=c.merge.method,
            out_dtype=None if c.merge.dtype == "auto" else c.merge.dtype,
            in_dtype=floating_dtype(cset),
            objective_definition=session.objective.describe(),
            task_splits={n: i.split for s in suites for n, i in s.info.items()},
            search={"kind": c.search.kind, "budget": c.search.budget, "seed": c.search.seed, "alpha": c.search.alpha},
            mlflow={
                "tracking_uri": tracker.display_uri,
                "experiment_id": tracker.experiment_id,
                "run_id": tracker.run_id or "",
            },
        )

    def _executor(self, session: EvalSession, resident: ResidentModel) -> Executor:
        """Where the trials' evaluations run: this process (and its DeepSpeed ranks), or Ray workers."""
        executor = make_executor(self.cfg, resident, session)
        self.workers = executor.workers
        return executor

    def _runtime_info(self, resident: ResidentModel) -> dict[str, Any]:
        """Where the trials ran: backend, ranks (a partitioned model's world size), workers (trials at
        once), device, dtype."""
        return {
            "backend": self.cfg.runtime.backend,
            "world_size": self.channel.ranks.world_size if self.channel else 1,
            "workers": self.workers,
            "device": resident.device,
            "dtype": str(resident.dtype).replace("torch.", ""),
        }

    def _resume_key(self, sources: Sources, session: EvalSession, resident: ResidentModel) -> dict[str, Any]:
        """Everything that changes the objective or the proposed points (not the budget)."""
        c = self.cfg
        return {
            # The fingerprint hashes tensor names, shapes and file sizes, which every step of one run
            # shares: the folder tells the steps apart.
            "checkpoints": [c_.identity()["fingerprint"] for c_ in sources.cset.checkpoints],
            "checkpoint_folders": [str(c_.folder) for c_ in sources.cset.checkpoints],
            "objective": session.objective.describe(),
            "dev_tasks": list(sources.dev_tasks),
            "eval": {
                "limit": c.eval.limit,
                "max_length": sources.max_length,
                "batch_size": c.eval.batch_size,
                "sample": "seeded",
                "bootstrap": c.eval.bootstrap,
            },
            "search": {
                "kind": c.search.kind,
                "alpha": c.search.alpha,
                "seed": c.search.seed,
                "acq_func": c.search.acq_func,
                "min_distance": c.search.min_distance,
                **({} if c.search.space.name == "pair" else {"space": self._space_key()}),
                # the previous pair's point changes the proposals; a search without one keeps its old key
                **({} if self.warm_point is None else {"previous_pair": list(self.warm_point)}),
            },
            # a method's settings change what it merges; linear has none, so its key is as it always was
            "merge": {"method": c.merge.method, **({"settings": dict(c.merge.settings)} if c.merge.settings else {})},
            "runtime": {"dtype": str(resident.dtype), "device": resident.device},
        }

    def _space_key(self) -> dict[str, Any]:
        """A wider space's name, settings and warm start (the pair's key stays as before spaces existed,
        so that a search started before still resumes)."""
        sp = self.cfg.search.space
        key: dict[str, Any] = {"name": sp.name, "settings": dict(sp.settings), "warm_start": sp.warm_start}
        if sp.warm_start:
            compare = self.cfg.compare
            key["baselines"] = {
                "lawa_k": compare.method_settings("lawa").k,
                "ema_beta": compare.method_settings("ema").beta,
            }
        return key

    def _finished_before(self, tracker: SearchTracker, key: dict[str, Any], owner: str | None) -> dict[str, Any] | None:
        """The result of the finished search with this key that wrote the output folder, if that is who
        wrote it: the same command run again after a search finished (a stop that came after its commit
        included) reports that result again instead of refusing the search's own folder.
        ``search.resume=never`` searches afresh (and is refused the folder, as before)."""
        if not owner or not owner.startswith(OWNER_SEARCH) or self.cfg.search.resume == "never":
            return None
        run_id = owner[len(OWNER_SEARCH) :]
        try:
            run = tracker.client.get_run(run_id)
            if (
                run.info.status != "FINISHED"
                or run.info.experiment_id != tracker.experiment_id
                or run.data.tags.get(resume.TAG_RESUME_HASH) != resume.key_hash(key)
            ):
                return None
            with tempfile.TemporaryDirectory() as tmp:
                path = tracker.client.download_artifacts(run_id, names.ARTIFACT_RESULT, tmp)
                result: dict[str, Any] = json.loads(Path(path).read_text())
        except Exception as e:  # noqa: BLE001 - not a finished search of ours: the folder check decides
            log.debug("output folder's search %s cannot be reported again: %s", run_id, e)
            return None
        log.info(
            "Search %s already finished with this config and wrote %s; reporting its result again "
            "(search.resume=never searches afresh)",
            run_id,
            self.output_dir,
        )
        return result

    def _resumable(self, tracker: SearchTracker, key: dict[str, Any]) -> str | None:
        choice = self.cfg.search.resume
        if choice == "never" or os.environ.get("MLFLOW_RUN_ID"):
            return None
        if choice == "auto":
            return resume.find_resumable(tracker.client, tracker.experiment_id, key)
        resume.check_resume(tracker.client, choice, key)
        return choice

    def _search_and_register(
        self,
        tracker: SearchTracker,
        sources: Sources,
        session: EvalSession,
        resident: ResidentModel,
        searcher: Searcher,
        past: list,
    ) -> dict[str, Any]:
        """The trials, then the finish in named steps: select, write, test report, result, log the model,
        commit. Everything before :meth:`_commit` is undone by a stop or an error (the run ends KILLED or
        FAILED, the written merge is removed, nothing is registered); the commit is one step under signals."""
        loop = self._trials(tracker, session, resident, searcher, past)
        chosen = self._select(tracker, loop, searcher, session, sources)
        facts = self.facts.with_(
            weights=dict(chosen.best.weights),
            objective=chosen.best.objective,
            dev_metrics=dict(chosen.best.metrics),
            gain=chosen.gain.as_json() if chosen.gain else None,
            decision=chosen.evidence.decision,
            decision_reason=chosen.evidence.reason,
            plot_artifact=chosen.plot,
        )
        merge = self._write(session, resident, chosen, facts)
        report = self._test_report(tracker, session, resident, sources, merge)
        facts = facts.with_(test_metrics=dict(report.by_model.get("best", {})))
        self._log_summary(tracker, loop, chosen, merge, report)
        result = self._result(tracker, session, resident, sources, loop, chosen, merge, report)
        pending = None
        if chosen.evidence.decision == evidence.REGISTERED:
            pending = self._log_for_registry(tracker, session, sources, chosen, merge, facts)
        self._commit(tracker, result, pending, facts)
        return result

    def _trials(
        self, tracker: SearchTracker, session: EvalSession, resident: ResidentModel, searcher: Searcher, past: list
    ) -> TrialLoop:
        cfg = self.cfg
        loop = TrialLoop(resident, session, tracker, searcher, self.space, parent_run_id=tracker.run_id)
        loop.replay(past)
        over = "" if self.space.is_pair else f" over {self.space.name}"
        with self._executor(session, resident) as executor:  # a Ray instance of ours stops with the trials
            self.trials = loop.run(
                cfg.search.budget, desc=f"search ({cfg.search.kind}{over})", executor=executor, redo=self.redo
            )
        if loop.best is None:
            raise EvaluationError(f"every trial failed, nothing to merge; the first failure: {self.trials[0].error}")
        if loop.stopped.get("reason") == "converged":
            tracker.set_tags({names.TAG_STOPPED: f"converged after {loop.stopped['after']} of {loop.stopped['of']}"})
        if tracker.log_plots and searcher.posterior() is not None:
            loop.log_plot(tracker.run_id, cfg.search.budget)  # type: ignore[arg-type]
        return loop

    def _select(
        self, tracker: SearchTracker, loop: TrialLoop, searcher: Searcher, session: EvalSession, sources: Sources
    ) -> Selection:
        """The result among the trials, its paired dev gain over the newest checkpoint, and what that allows."""
        cfg, cset = self.cfg, sources.cset
        best, selected_by = evidence.select_result(self.trials, searcher, cfg.search.select)
        assert best.objective is not None  # the result is chosen among evaluated trials
        newest = evidence.newest_alone(self.trials)
        gain = (
            session.bootstrap.objective_gain(
                session.objective, evidence.dev_scores(best, loop, session), evidence.dev_scores(newest, loop, session)
            )
            if newest
            else None
        )
        weighed = evidence.weigh(gain, cset.names[-1], cfg.registry.enabled, cfg.registry.require_significant_gain)
        plot = names.ARTIFACT_PLOT if tracker.log_plots and searcher.posterior() is not None else None
        return Selection(best, selected_by, newest, gain, weighed, plot)

    def _write(self, session: EvalSession, resident: ResidentModel, chosen: Selection, facts: MergeFacts) -> Written:
        """The best merge: written from the checkpoint tensors, verified, reloaded and re-scored. Only once
        it is in place is the folder ours to remove on a later failure (a refused rename leaves the
        existing folder, someone else's, as it was)."""
        best = chosen.best
        assert best.objective is not None
        model, tokenizer, lm, rescored = write_and_verify(
            self.cfg.merge,
            self.cfg.registry,
            session,
            resident,
            best.weights,
            best.objective,
            self.output_dir,
            {"weights": best.weights, "lambda": best.lam, "point": best.x},
            owner=self.owner,
            files=folder_files(facts),
        )
        self._written = True
        return Written(model, tokenizer, lm, rescored)

    def _test_report(
        self, tracker: SearchTracker, session: EvalSession, resident: ResidentModel, sources: Sources, merge: Written
    ) -> HeldOutReport:
        test, test_scores = session.test_report(merge.lm, resident)
        tracker.log_datasets(None, session.datasets("test"), CONTEXT_TEST)
        test_gains = session.test_gains(test_scores, sources.cset.names[-1])
        if test_scores:  # per reported model, so that later comparisons need not evaluate again
            tracker.log_text(
                None,
                "{" + ",".join(f"{json.dumps(who)}:{scores_json(sc)}" for who, sc in test_scores.items()) + "}",
                names.ARTIFACT_TEST_DOC_SCORES,
            )
        return HeldOutReport(test, test_gains)

    def _log_summary(
        self, tracker: SearchTracker, loop: TrialLoop, chosen: Selection, merge: Written, report: HeldOutReport
    ) -> None:
        summary = {
            **finish.summary_metrics(chosen, merge, report),
            **cost.cost_metrics(loop.cost(self.cfg.search.budget)),
        }
        tracker.log_metrics(summary, step=self.cfg.search.budget)
        tracker.set_tags({names.TAG_DECISION: chosen.evidence.decision, names.TAG_SELECTED_BY: chosen.selected_by})

    def _result(
        self,
        tracker: SearchTracker,
        session: EvalSession,
        resident: ResidentModel,
        sources: Sources,
        loop: TrialLoop,
        chosen: Selection,
        merge: Written,
        report: HeldOutReport,
    ) -> dict[str, Any]:
        """The ``result.json`` dict (``registered_model`` is filled in by the commit)."""
        return {
            **finish.result_fields(chosen, merge, report, self.space, self.trials),
            "stopped_early": loop.stopped_reason,
            "warm_start_dropped": self.warm_left_out,  # baselines of the warm start the budget did not reach
            "cost": loop.cost(self.cfg.search.budget),
            "stopped": loop.stopped,
            "objective_definition": session.objective.describe(),
            "checkpoints": [{"name": c.name, **c.identity()} for c in sources.cset.checkpoints],
            "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id, "run_id": tracker.run_id},
            "runtime": self._runtime_info(resident),
            "registered_model": None,
            "output_dir": str(self.output_dir),
        }

    def _log_for_registry(
        self,
        tracker: SearchTracker,
        session: EvalSession,
        sources: Sources,
        chosen: Selection,
        merge: Written,
        facts: MergeFacts,
    ) -> PendingVersion:
        """The verified merge logged to MLflow (slow; a stop here is still undone): the version itself is
        created by the commit."""
        best, gain, cset = chosen.best, chosen.gain, sources.cset
        assert best.objective is not None
        gain_tags = {
            "gain": json.dumps(gain.as_json()) if gain else "",
            "significant": str(chosen.evidence.significant_gain).lower(),
            "decision": chosen.evidence.decision,
            "checkpoints": ",".join(cset.names),
        }
        return log_for_registry(
            self.cfg.registry,
            tracker,
            merge.model,
            merge.tokenizer,
            best.weights,
            best.objective,
            session,
            version_description(facts),
            {"sources": ",".join(c.ref.text for c in cset.checkpoints), **gain_tags},
            folder=self.output_dir,
        )

    def _commit(
        self, tracker: SearchTracker, result: dict[str, Any], pending: PendingVersion | None, facts: MergeFacts
    ) -> None:
        """The one step that makes the search finished: the registered version and its alias, the card, the
        run's note and ``result.json`` artifact, the run ended FINISHED. Stop signals are held from here
        until the result is reported (:func:`ckptmerge.signals.committing`): a stop before this step
        undoes the search, one after it changes nothing."""
        with signals.committing():
            if pending is not None:
                result["registered_model"] = pending.commit(tracker)
                facts = facts.with_(registered=result["registered_model"])
            update_card(self.output_dir, facts)  # now with test results and the registered version
            tracker.describe(run_note(facts, tracker.run_id))
            tracker.log_text(None, json.dumps(result, indent=2), names.ARTIFACT_RESULT)
            tracker.finish("FINISHED")
            self._committed = True


def run(cfg: Config, context: Any) -> dict[str, Any]:
    """``action=search``: the search, then its summary on stdout."""
    from ckptmerge.report import print_search_summary
    from ckptmerge.tracking.secrets import redact_data

    search = SearchRun(cfg, context.run_dir, context.cwd, context.config_yaml, channel=context.channel)
    result = redact_data(search.run())
    print_search_summary(result, context.run_dir)
    return result
