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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ckptmerge.checkpoints.atomic import check_target, folder_owner, refuse_inputs
from ckptmerge.checkpoints.writer import check_space, merged_size
from ckptmerge.config import Config, parse_size
from ckptmerge.errors import EvaluationError
from ckptmerge.evaluation.doc_scores import scores_json
from ckptmerge.interop import folder_files, update_card
from ckptmerge.interop.facts import MergeFacts, checkpoint_entries, floating_dtype
from ckptmerge.merge import searchable
from ckptmerge.resident import ResidentModel
from ckptmerge.runtime import seed_everything
from ckptmerge.runtime.distributed import Channel
from ckptmerge.search.searchers import Searcher, make_searcher
from ckptmerge.session import cost, evidence
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.register import register, write_and_verify
from ckptmerge.session.setup import Sources, resolve_search_sources, search_space
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
        self.run_dir = Path(run_dir).resolve()
        self.cwd = Path(cwd)
        self.config_yaml = config_yaml
        self.output_dir = (
            Path(cfg.merge.output_dir).expanduser().resolve() if cfg.merge.output_dir else self.run_dir / "merged"
        )
        self.trials: list[Trial] = []
        self._written = False
        self._lock: search_lock.SearchLock | None = None

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
        parse_size(cfg.merge.shard_size, "merge.shard_size")
        # An output folder that an earlier search wrote may be that search's own, to be resumed; which
        # search is known once the parent run is, so its folder is checked again then.
        earlier = folder_owner(self.output_dir)
        check_target(
            self.output_dir,
            cfg.merge.overwrite,
            owner=earlier if earlier and earlier.startswith(OWNER_SEARCH) else None,
        )
        tracker = SearchTracker(cfg.tracking, self.cwd)  # unreachable tracking fails here, in seconds
        sources = resolve_search_sources(cfg)
        cset = sources.cset
        refuse_inputs(self.output_dir, [c.folder for c in cset.checkpoints])
        # The merge is written after the whole budget: a disk too small for it fails now, not then.
        out_dtype = None if cfg.merge.dtype == "auto" else getattr(torch, cfg.merge.dtype)
        check_space(self.output_dir, merged_size(cset.newest.reader.meta(), out_dtype))
        self.space, initial = search_space(cfg, len(cset))
        self.warm_point, initial = warm.initial_for(
            self.space, initial, self.previous_result, float(cfg.search.min_distance)
        )
        searcher = make_searcher(cfg.search, self.space, initial)  # e.g. grid over k > 2 is refused here
        # unknown tasks/metrics and test-split dev tasks fail before the model is built
        session, resident = EvalSession.with_resident(cfg, sources, self.channel)
        key = self._resume_key(sources, session, resident)
        # one search per key on this store: taken before looking for a run to resume, so two resumes
        # of one crashed search serialise instead of one resuming and the other starting afresh
        self._lock = search_lock.acquire(tracker.uri, tracker.client, tracker.experiment_id, resume.key_hash(key))
        if self.on_locked is not None:
            self.on_locked(tracker)
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
            past = []
            if resume_id:
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
            except BaseException:
                if self._written:  # a merge we wrote whose report or registration failed never stays behind
                    shutil.rmtree(self.output_dir, ignore_errors=True)
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

    def _runtime_info(self, resident: ResidentModel) -> dict[str, Any]:
        """Where the trials ran: backend, ranks (a partitioned model's world size), device, dtype."""
        return {
            "backend": self.cfg.runtime.backend,
            "world_size": self.channel.ranks.world_size if self.channel else 1,
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
        cfg, cset = self.cfg, sources.cset
        loop = TrialLoop(resident, session, tracker, searcher, self.space, parent_run_id=tracker.run_id)
        loop.replay(past)
        over = "" if self.space.is_pair else f" over {self.space.name}"
        self.trials = loop.run(cfg.search.budget, desc=f"search ({cfg.search.kind}{over})")
        if loop.best is None:
            raise EvaluationError(f"every trial failed, nothing to merge; the first failure: {self.trials[0].error}")
        plot = None
        if loop.stopped.get("reason") == "converged":
            tracker.set_tags({names.TAG_STOPPED: f"converged after {loop.stopped['after']} of {loop.stopped['of']}"})
        if tracker.log_plots and searcher.posterior() is not None:
            loop.log_plot(tracker.run_id, cfg.search.budget)  # type: ignore[arg-type]
            plot = names.ARTIFACT_PLOT
        best, selected_by = evidence.select_result(self.trials, searcher, cfg.search.select)
        assert best.objective is not None  # the result is chosen among evaluated trials
        newest = evidence.newest_alone(self.trials)
        baseline = newest.objective if newest else None
        gain = (
            session.bootstrap.objective_gain(
                session.objective, evidence.dev_scores(best, loop, session), evidence.dev_scores(newest, loop, session)
            )
            if newest
            else None
        )
        verdict = evidence.weigh(gain, cset.names[-1], cfg.registry.enabled, cfg.registry.require_significant_gain)

        # The best merge: written from the checkpoint tensors, verified, reloaded and re-scored. Only once
        # it is in place is the folder ours to remove on a later failure (a refused rename leaves the
        # existing folder, someone else's, as it was).
        facts = self.facts.with_(
            weights=dict(best.weights),
            objective=best.objective,
            dev_metrics=dict(best.metrics),
            gain=gain.as_json() if gain else None,
            decision=verdict.decision,
            decision_reason=verdict.reason,
            plot_artifact=plot,
        )
        merged_model, merged_tok, reloaded, rescored = write_and_verify(
            cfg,
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
        test, test_scores = session.test_report(reloaded, resident)
        tracker.log_datasets(None, session.datasets("test"), CONTEXT_TEST)
        facts = facts.with_(test_metrics=dict(test.get("best", {})))
        test_gains = session.test_gains(test_scores, cset.names[-1])
        if test_scores:  # per reported model, so that later comparisons need not evaluate again
            tracker.log_text(
                None,
                "{" + ",".join(f"{json.dumps(who)}:{scores_json(sc)}" for who, sc in test_scores.items()) + "}",
                names.ARTIFACT_TEST_DOC_SCORES,
            )
        summary = {
            names.METRIC_BEST_LAMBDA: list(best.weights.values())[-1],
            names.METRIC_RESCORED_OBJECTIVE: rescored,
            **{names.weight_param(n): w for n, w in best.weights.items()},
            **{names.PREFIX_BEST + k: v for k, v in best.metrics.items()},
            **{f"{names.PREFIX_TEST}{who}.{k}": v for who, ms in test.items() for k, v in ms.items()},
        }
        if baseline is not None:
            summary[names.METRIC_BASELINE_OBJECTIVE] = baseline
        if gain is not None:
            summary.update(gain.as_metrics(names.METRIC_GAIN))
        for key, g in test_gains.items():
            summary.update(g.as_metrics(names.safe_key(names.PREFIX_TEST_GAIN + key)))
        bill = loop.cost(cfg.search.budget)
        summary.update(cost.cost_metrics(bill))
        tracker.log_metrics(summary, step=cfg.search.budget)
        tracker.set_tags({names.TAG_DECISION: verdict.decision, names.TAG_SELECTED_BY: selected_by})

        result: dict[str, Any] = {
            "lambda": best.lam,
            "weights": best.weights,
            "point": list(best.x),
            "space": {
                "name": self.space.name,
                "checkpoints": len(best.weights),
                "point": dict(zip(self.space.coordinates, best.x)),
            },
            "objective": best.objective,
            "objective_se": best.objective_se,
            "selected_by": selected_by,
            "baseline_objective": baseline,
            "gain": gain.as_json() if gain else None,
            "test_gains": evidence.gains_json(test_gains),
            "decision": verdict.decision,
            "stopped_early": loop.stopped_reason,
            "cost": bill,
            "stopped": loop.stopped,
            "decision_reason": verdict.reason,
            "rescored_objective": rescored,
            "objective_definition": session.objective.describe(),
            "metrics": best.metrics,
            "test_metrics": test.get("best", {}),
            "test_metrics_by_checkpoint": {k: v for k, v in test.items() if k != "best"},
            "trials": [t.as_json() for t in self.trials],
            "checkpoints": [{"name": c.name, **c.identity()} for c in cset.checkpoints],
            "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id, "run_id": tracker.run_id},
            "runtime": self._runtime_info(resident),
            "registered_model": None,
            "output_dir": str(self.output_dir),
        }
        if verdict.decision == evidence.REGISTERED:
            gain_tags = {
                "gain": json.dumps(gain.as_json()) if gain else "",
                "significant": str(verdict.significant_gain).lower(),
                "decision": verdict.decision,
                "checkpoints": ",".join(cset.names),
            }
            result["registered_model"] = register(
                cfg,
                tracker,
                merged_model,
                merged_tok,
                best.weights,
                best.objective,
                session,
                version_description(facts),
                {"sources": ",".join(c.ref.text for c in cset.checkpoints), **gain_tags},
                folder=self.output_dir,
            )
            facts = facts.with_(registered=result["registered_model"])
        update_card(self.output_dir, facts)  # now with test results and the registered version
        tracker.describe(run_note(facts, tracker.run_id))
        tracker.log_text(None, json.dumps(result, indent=2), names.ARTIFACT_RESULT)
        return result


def run(cfg: Config, context: Any) -> dict[str, Any]:
    """``action=search``: the search, then its summary on stdout."""
    from ckptmerge.report import print_search_summary
    from ckptmerge.tracking.secrets import redact_data

    search = SearchRun(cfg, context.run_dir, context.cwd, context.config_yaml, channel=context.channel)
    result = redact_data(search.run())
    print_search_summary(result, context.run_dir)
    return result
