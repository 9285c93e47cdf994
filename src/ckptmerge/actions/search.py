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
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptmerge.actions.evaluation import EvalSession
from ckptmerge.actions.setup import Sources, resolve_sources
from ckptmerge.checkpoints.resident import ResidentModel
from ckptmerge.checkpoints.writer import check_target, write_merged
from ckptmerge.config import Config, parse_size
from ckptmerge.errors import EvaluationError
from ckptmerge.merge import get_method
from ckptmerge.runtime import seed_everything
from ckptmerge.search.searchers import Proposal, Searcher, make_searcher
from ckptmerge.search.space import WeightSpace
from ckptmerge.tracking import names
from ckptmerge.tracking.mlflow_run import SearchTracker

log = logging.getLogger(__name__)


@dataclass
class Trial:
    index: int
    x: tuple[float, ...]            # the searched point; for a pair, (λ,)
    weights: dict[str, float]       # checkpoint name -> weight, oldest first
    source: str
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def lam(self) -> float | None:
        """λ, the weight of the newest checkpoint, when the search is over a pair."""
        return self.x[0] if len(self.weights) == 2 else None

    def as_json(self) -> dict[str, Any]:
        out = {"lambda": self.lam, "weights": self.weights, "objective": self.objective, "proposed_by": self.source,
               "metrics": self.metrics, "run_id": self.run_id, "seconds": round(self.seconds, 3)}
        if self.error:
            out["error"] = self.error
        return out


class SearchRun:
    """One search from checks to registry; :meth:`run` returns the ``result.json`` dict."""

    def __init__(self, cfg: Config, run_dir: Path, cwd: Path, config_yaml: str = "") -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        self.cwd = Path(cwd)
        self.config_yaml = config_yaml
        self.output_dir = Path(cfg.merge.output_dir).expanduser().resolve() if cfg.merge.output_dir else self.run_dir / "merged"
        self.trials: list[Trial] = []
        self._written = False

    # -- the whole thing ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        seed_everything(cfg.search.seed, cfg.runtime.threads)
        get_method(cfg.merge.method)  # unknown names fail before anything expensive
        shard_bytes = parse_size(cfg.merge.shard_size, "merge.shard_size")
        check_target(self.output_dir, cfg.merge.overwrite)
        tracker = SearchTracker(cfg.tracking, self.cwd)  # unreachable tracking fails here, in seconds
        sources = resolve_sources(cfg)
        cset = sources.cset
        self.space = WeightSpace(len(cset), float(cfg.search.alpha))
        searcher = make_searcher(cfg.search, self.space)  # e.g. grid over k > 2 is refused here
        session = EvalSession(cfg, sources)  # unknown tasks/metrics and test-split dev tasks fail here
        resident = ResidentModel(cset, device=cfg.runtime.device, dtype=cfg.runtime.dtype)
        session.bind(resident)
        run_id = tracker.start(
            run_name=f"search-{'-'.join(cset.names)}",
            config=cfg.to_dict(),
            config_yaml=self.config_yaml,
            checkpoints=[{"name": c.name, **c.identity()} for c in cset.checkpoints],
            tags={names.TAG_OBJECTIVE: session.objective.describe(), names.TAG_CHECKPOINTS: ",".join(cset.names)},
        )
        log.info("MLflow parent run %s; objective %s", run_id, session.objective.describe())
        try:
            result = self._search_and_register(tracker, sources, session, resident, searcher, shard_bytes)
        except BaseException as e:
            tracker.set_tags({"ckptmerge.error": str(e).splitlines()[0] if str(e) else type(e).__name__})
            tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            if self._written:
                shutil.rmtree(self.output_dir, ignore_errors=True)
            raise
        tracker.finish("FINISHED")
        return result

    # -- trials ------------------------------------------------------------------------------
    def _trial(self, tracker: SearchTracker, session: EvalSession, resident: ResidentModel,
               searcher: Searcher, index: int, prop: Proposal) -> Trial:
        cset = resident.cset
        weights = self.space.weights(prop.x)
        named = dict(zip(cset.names, weights))
        trial = Trial(index=index, x=prop.x, weights=named, source=prop.source)
        params: dict[str, Any] = {names.PARAM_TRIAL: index, names.PARAM_PROPOSED_BY: prop.source}
        if self.space.is_pair:
            params[names.PARAM_LAMBDA] = prop.lam
        else:
            params.update({f"{names.PARAM_POINT_PREFIX}{i + 1}": v for i, v in enumerate(prop.x)})
        params.update({names.weight_param(n): w for n, w in named.items()})
        trial.run_id = tracker.start_trial(index, params)
        t0 = time.perf_counter()
        try:
            resident.apply(weights)
            trial.metrics = session.evaluate_dev()
            objective = session.objective(trial.metrics)
            if not math.isfinite(objective):
                raise EvaluationError(f"objective is not finite ({objective}) at weights {named}")
        except EvaluationError as e:
            trial.error = str(e)
            trial.seconds = time.perf_counter() - t0
            searcher.mark_failed(prop.x)
            tracker.set_tags({names.TAG_TRIAL_STATUS: "failed", "ckptmerge.error": trial.error[:4000]}, trial.run_id)
            tracker.end_trial(trial.run_id, "FAILED")
            log.warning("Trial %d at %s failed: %s", index, named, trial.error, exc_info=e.__cause__ is not None)
            return trial
        trial.objective = objective
        trial.seconds = time.perf_counter() - t0
        searcher.tell(prop.x, objective)
        state = searcher.state()
        metrics = {names.METRIC_OBJECTIVE: objective, **trial.metrics, "trial_seconds": trial.seconds}
        metrics.update({k: v for k, v in state.items() if isinstance(v, float)})
        tracker.log_metrics(metrics, step=index, run_id=trial.run_id)
        tags = {k: v for k, v in state.items() if isinstance(v, str)}
        tracker.set_tags({names.TAG_TRIAL_STATUS: "ok", **tags}, trial.run_id)
        self._log_plot(tracker, searcher, trial.run_id, index)
        tracker.end_trial(trial.run_id)
        return trial

    def _log_plot(self, tracker: SearchTracker, searcher: Searcher, run_id: str, index: int) -> None:
        if not tracker.log_plots:
            return
        from ckptmerge.tracking.plots import posterior_figure, trials_figure

        post = searcher.posterior()
        title = f"trial {index}: {len(searcher.xs)} evaluations"
        if not self.space.is_pair:
            return  # no 1-D picture of a k-dimensional GP; its state is in the metrics
        xs = [x[0] for x in searcher.xs]
        if post is not None:
            nxt = searcher.next_point()
            fig = posterior_figure(post, xs, searcher.ys, searcher.alpha, next_lambda=nxt[0] if nxt else None, title=title)
        else:
            fig = trials_figure(xs, searcher.ys, searcher.alpha, title=title)
        tracker.log_figure(run_id, fig, names.ARTIFACT_PLOT)

    def _search_and_register(self, tracker: SearchTracker, sources: Sources, session: EvalSession,
                             resident: ResidentModel, searcher: Searcher, shard_bytes: int) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg, cset = self.cfg, sources.cset
        best: Trial | None = None
        bar = tqdm(total=cfg.search.budget, desc=f"search λ ({cfg.search.kind})", unit="trial")
        for index in range(cfg.search.budget):
            trial = self._trial(tracker, session, resident, searcher, index, searcher.ask())
            self.trials.append(trial)
            if trial.objective is not None and (best is None or trial.objective > best.objective):  # type: ignore[operator]
                best = trial
            if best is not None:
                tracker.log_metrics({names.METRIC_BEST_OBJECTIVE: best.objective}, step=index)
                bar.set_postfix(best_newest_weight=f"{list(best.weights.values())[-1]:.3f}", best=f"{best.objective:.4f}")
            bar.update(1)
        bar.close()
        if best is None:
            raise EvaluationError(f"every trial failed, nothing to merge; the first failure: {self.trials[0].error}")
        if tracker.log_plots and searcher.posterior() is not None:
            self._log_plot(tracker, searcher, tracker.run_id, cfg.search.budget)  # type: ignore[arg-type]
        newest = next((t for t in self.trials if t.objective is not None and list(t.weights.values())[-1] == 1.0), None)
        baseline = newest.objective if newest else None

        # The best merge: written from the checkpoint tensors, verified, reloaded and re-scored.
        weights = list(best.weights.values())
        out_dtype = None if cfg.merge.dtype == "auto" else getattr(__import__("torch"), cfg.merge.dtype)
        write_merged([c.reader for c in cset.checkpoints], cset.newest.folder, weights, self.output_dir,
                     get_method(cfg.merge.method), shard_bytes, out_dtype=out_dtype, overwrite=cfg.merge.overwrite,
                     extra_files={"ckptmerge.json": json.dumps({"weights": best.weights, "lambda": best.lam, "point": best.x}, indent=2)},
                     progress=True)
        self._written = True
        merged_model, merged_tok, reloaded = session.reload(self.output_dir)
        rescored = session.objective(session.evaluate_dev(reloaded))
        tol = cfg.registry.rescore_tolerance * max(1.0, abs(best.objective))  # type: ignore[arg-type]
        if not math.isfinite(rescored) or abs(rescored - best.objective) > tol:  # type: ignore[operator]
            raise EvaluationError(
                f"the written merge scores {rescored:.6f} but the search saw {best.objective:.6f} "
                f"(tolerance {tol:.2g}); not registering it"
            )
        test = session.test_report(reloaded, resident)
        summary = {
            names.METRIC_BEST_LAMBDA: list(best.weights.values())[-1],
            names.METRIC_RESCORED_OBJECTIVE: rescored,
            **{names.weight_param(n): w for n, w in best.weights.items()},
            **{names.PREFIX_BEST + k: v for k, v in best.metrics.items()},
            **{f"{names.PREFIX_TEST}{who}.{k}": v for who, ms in test.items() for k, v in ms.items()},
        }
        if baseline is not None:
            summary[names.METRIC_BASELINE_OBJECTIVE] = baseline
            summary[names.METRIC_GAIN] = best.objective - baseline  # type: ignore[operator]
        tracker.log_metrics(summary, step=cfg.search.budget)

        result: dict[str, Any] = {
            "lambda": best.lam,
            "weights": best.weights,
            "point": list(best.x),
            "objective": best.objective,
            "baseline_objective": baseline,
            "rescored_objective": rescored,
            "objective_definition": session.objective.describe(),
            "metrics": best.metrics,
            "test_metrics": test.get("best", {}),
            "test_metrics_by_checkpoint": {k: v for k, v in test.items() if k != "best"},
            "trials": [t.as_json() for t in self.trials],
            "checkpoints": [{"name": c.name, **c.identity()} for c in cset.checkpoints],
            "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id, "run_id": tracker.run_id},
            "registered_model": None,
            "output_dir": str(self.output_dir),
        }
        if cfg.registry.enabled:
            from ckptmerge.tracking.registry import log_and_register

            tags = {"lambda": f"{list(best.weights.values())[-1]:.6f}",
                    "weights": json.dumps({n: round(w, 6) for n, w in best.weights.items()}), "sources": ",".join(c.ref.text for c in cset.checkpoints),
                    "objective": f"{best.objective:.6f}", "search_run_id": tracker.run_id,
                    "objective_definition": session.objective.describe()}
            description = (f"Merge {' + '.join(f'{w:.4f}·{n}' for n, w in best.weights.items())}, "
                           f"found by ckptmerge ({cfg.search.kind}, {cfg.search.budget} evaluations); "
                           f"dev objective {best.objective:.5f} ({session.objective.describe()}).")
            reg = log_and_register(tracker.run_id, merged_model, merged_tok, cfg.registry.name, cfg.registry.alias,  # type: ignore[arg-type]
                                   tags, description, tracker.uri)
            result["registered_model"] = {"name": reg.name, "version": reg.version, "alias": reg.alias}
            tracker.set_tags({"ckptmerge.registered_model": f"{reg.name}/{reg.version}"})
        tracker.log_text(None, json.dumps(result, indent=2), names.ARTIFACT_RESULT)
        return result
