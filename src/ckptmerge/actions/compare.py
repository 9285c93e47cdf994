"""``action=compare``: the paper's baselines against BO on the same checkpoints and dev objective.

A method is a registered merge method (``ckptmerge.merge.METHODS``; by default every one flagged as a
baseline), run by its form: a weighting rule's weights are merged linearly, a calibration method reads
its statistic of each checkpoint on calibration text, a per-tensor function runs with uniform weights.
Each reads its settings from ``compare.settings.<method>`` over its defaults (``conf/merge/<method>.yaml``).
Multi-checkpoint methods use the last ``compare.last`` checkpoints; pair methods (``bo``, ``grid``,
``random``) the last two. Our searches are named ``<searcher>_<space>`` (``bo_simplex``, ``bo_ema``,
``bo_window``, ``bo_decay``; a bare ``bo`` is the paper's pair) and get the same evaluation budget
(``search.budget``); a search over more than two checkpoints starts from the baselines' weightings. One
parent run holds a child run per method (searched methods nest their trials under it); the table
(dev objective, every test metric, evaluations used, wall time) is written as markdown and CSV with a
bar chart, logged, and printed. ``compare.register=true`` registers the best merge like a search's.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptmerge.calibration import read_texts
from ckptmerge.config import Config, ConfigError, searched_method
from ckptmerge.errors import EvaluationError
from ckptmerge.evaluation.doc_scores import DocScores, scores_from_json, scores_json
from ckptmerge.evaluation.uncertainty import Gain, gains_by_metric
from ckptmerge.merge import baseline_names
from ckptmerge.merge import method as merge_method
from ckptmerge.resident import ResidentModel
from ckptmerge.runtime import seed_everything
from ckptmerge.search.searchers import make_searcher
from ckptmerge.session.evaluation import EvalSession
from ckptmerge.session.executor import Executor, InProcessExecutor, run_all
from ckptmerge.session.executors import make_executor
from ckptmerge.session.head_to_head import head_to_heads
from ckptmerge.session.methods import BaselineJob, MethodMerger, MethodOutcome, TestReportJob
from ckptmerge.session.setup import search_space
from ckptmerge.session.study import start_study
from ckptmerge.session.trials import TrialLoop
from ckptmerge.tracking import names
from ckptmerge.tracking.mlflow_run import SearchTracker
from ckptmerge.tracking.secrets import redact_data

log = logging.getLogger(__name__)

ARTIFACT_METHOD = "method.json"  # a method run's result and per-document scores, for a resumed comparison


@dataclass
class MethodResult:
    method: str
    objective: float
    evaluations: int
    seconds: float
    weights: dict[str, float] | None  # None for merges that are not linear (Fisher, RegMean)
    dev_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    dev_scores: DocScores | None = field(default=None, repr=False)  # per-document, for paired gains
    test_scores: DocScores | None = field(default=None, repr=False)
    gain: Gain | None = None  # dev objective vs the newest checkpoint alone, paired
    test_gains: dict[str, Gain] = field(default_factory=dict)
    documents: int = 0  # dev documents scored to reach it (its evaluations' bill, session/cost.py)

    def as_record(self) -> dict[str, Any]:
        """Everything a resumed comparison needs to reuse this method without running it again."""
        return {
            **{k: v for k, v in self.as_json().items() if k not in ("gain", "test_gains")},
            "dev_scores": json.loads(scores_json(self.dev_scores)) if self.dev_scores else None,
            "test_scores": json.loads(scores_json(self.test_scores)) if self.test_scores else None,
        }

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> MethodResult:
        return cls(
            d["method"],
            float(d["objective"]),
            int(d["evaluations"]),
            float(d["seconds"]),
            d["weights"],
            d["dev_metrics"],
            d["test_metrics"],
            d["run_id"],
            dev_scores=scores_from_json(json.dumps(d["dev_scores"])) if d["dev_scores"] else None,
            test_scores=scores_from_json(json.dumps(d["test_scores"])) if d["test_scores"] else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "objective": self.objective,
            "evaluations": self.evaluations,
            "documents": self.documents,
            "seconds": self.seconds,
            "weights": self.weights,
            "dev_metrics": self.dev_metrics,
            "test_metrics": self.test_metrics,
            "run_id": self.run_id,
            "gain": self.gain.as_json() if self.gain else None,
            "test_gains": {k: g.as_json() for k, g in self.test_gains.items()},
        }


def finished_methods(tracker: SearchTracker, parent: str) -> dict[str, MethodResult]:
    """The methods a resumed comparison already finished: its FINISHED method runs, read back from the
    record each logged (``method.json``). A method that did not finish is run again."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.mlflow.parentRunId = '{parent}' and tags.`{names.TAG_KIND}` = 'method' and "
        "attributes.status = 'FINISHED'",
        max_results=1000,
    )
    done: dict[str, MethodResult] = {}
    for run in runs:
        try:
            local = tracker.client.download_artifacts(run.info.run_id, ARTIFACT_METHOD)
            result = MethodResult.from_record(json.loads(Path(local).read_text()))
        except Exception as e:  # noqa: BLE001 - no record (an older run): the method runs again
            log.info("method run %s has no readable %s (%s); running it again", run.info.run_id, ARTIFACT_METHOD, e)
            continue
        done[result.method] = result
    return done


class Comparison:
    """Runs each method on the executor (its evaluations where the resident models are), logs its child
    run and keeps the table."""

    def __init__(
        self,
        cfg: Config,
        tracker: SearchTracker,
        session: EvalSession,
        resident: ResidentModel,
        calib_path: Path | None,
    ) -> None:
        self.cfg, self.tracker, self.session, self.resident = cfg, tracker, session, resident
        self.names = resident.cset.names
        self.k = len(self.names)
        self.calib_path = calib_path

    def baseline(self, method: str) -> BaselineJob:
        """Baseline ``method`` as a job: merged and scored wherever the executor runs it."""
        return BaselineJob(self.cfg, method, self.calib_path)

    def registered(self, name: str) -> tuple[list[float] | None, float, dict]:
        """Merge method ``name`` into this process's resident model, scored on dev (to register a
        non-linear merge that was made elsewhere: a Ray worker, a resumed run)."""
        return MethodMerger(self.cfg, self.session, self.resident, self.calib_path).registered(name)

    def open(self, method: str) -> str:
        """The method's child run, opened as its work is sent off."""
        return self.tracker.start_trial(0, {"method": method}, run_name=method, kind="method")

    def searched(self, method: str, run_id: str, executor: Executor) -> MethodOutcome:
        """Our search ``method`` on the same budget, its trials on the executor's workers; the best
        observation's test report too."""
        kind, space_name = searched_method(method)  # type: ignore[misc]  # validated with the config
        space, initial = search_space(
            self.cfg.search, self.cfg.compare, 2 if space_name == "pair" else self.k, space_name
        )
        search_cfg = dataclasses.replace(self.cfg.search, kind=kind)
        loop = TrialLoop(
            self.resident,
            self.session,
            self.tracker,
            make_searcher(search_cfg, space, initial),
            space,
            parent_run_id=run_id,
            best_metric_run_id=run_id,
        )
        t0 = time.perf_counter()
        loop.run(search_cfg.budget, desc=f"compare {method}", executor=executor)
        evaluations = len(loop.trials)  # what the search spent: fewer than the budget once it converged
        docs = sum(t.docs_evaluated or 0 for t in loop.trials)
        if loop.best is None:
            raise EvaluationError(f"{method}: every trial failed; the first failure: {loop.trials[0].error}")
        # The best observation, as every other method here is ranked by its observed dev objective.
        best = loop.best
        w = loop.full_weights(best)
        seconds = time.perf_counter() - t0
        executor.submit_job(method, TestReportJob(w))
        _, (test, test_scores) = executor.next_done()
        assert best.objective is not None
        return MethodOutcome(
            w, best.objective, best.metrics, best.scores, test, test_scores, evaluations, docs, seconds
        )

    def record(self, method: str, run_id: str, out: MethodOutcome) -> MethodResult:
        """The method's result, logged on its child run (with the record a resume reuses), run closed."""
        res = MethodResult(
            method,
            out.objective,
            out.evaluations,
            out.seconds,
            dict(zip(self.names, out.weights)) if out.weights is not None else None,
            out.dev_metrics,
            out.test_metrics,
            run_id,
            dev_scores=out.dev_scores,
            test_scores=out.test_scores,
            documents=out.documents,
        )
        metrics = {
            names.METRIC_OBJECTIVE: out.objective,
            "evaluations": out.evaluations,
            "documents": out.documents,
            "seconds": out.seconds,
            **out.dev_metrics,
            **{names.PREFIX_TEST + k: v for k, v in out.test_metrics.items()},
        }
        if out.weights is not None:
            metrics.update({names.weight_param(n): w for n, w in zip(self.names, out.weights)})
        self.tracker.log_metrics(metrics, run_id=run_id)
        self.tracker.log_text(run_id, json.dumps(res.as_record()), ARTIFACT_METHOD)  # what a resume reuses
        self.tracker.end_trial(run_id)
        log.info("%s: objective %.5f, %d evaluations, %.1fs", method, out.objective, out.evaluations, out.seconds)
        return res

    def run_all(self, methods: list[str], executor: Executor, finished: Callable[[MethodResult], None]) -> None:
        """Every method: the baselines first, all at once over the workers (independent), then each
        search in turn, its trials over the workers. ``finished`` is called as each method's result is in.
        A method that fails ends its child run (and every other open one) FAILED and stops the comparison."""
        open_runs: dict[str, str] = {}

        def started(method: Hashable) -> None:
            open_runs[str(method)] = self.open(str(method))

        def done(method: Hashable, out: MethodOutcome) -> None:
            finished(self.record(str(method), open_runs.pop(str(method)), out))

        try:
            baselines = [m for m in methods if searched_method(m) is None]
            run_all(executor, [(m, self.baseline(m)) for m in baselines], done, started)
            for method in methods:
                if method in baselines:
                    continue
                seed_everything(self.cfg.search.seed, self.cfg.runtime.threads)  # each method from the same seed
                started(method)
                done(method, self.searched(method, open_runs[method], executor))
        except BaseException:
            for run_id in open_runs.values():
                self.tracker.end_trial(run_id, "FAILED")
            raise


def _test_higher_is_better(session: EvalSession) -> dict[str, bool]:
    return {
        f"{t}/{m}": bool(v)
        for t, info in (session.test.info.items() if session.test else ())
        for m, v in info.higher_is_better.items()
    }


def add_gains(results: list[MethodResult], session: EvalSession, hib: dict[str, bool]) -> None:
    """Each method's paired gains over ``newest`` on the same documents: dev objective and test metrics
    (``hib``: whether higher is better, per test metric)."""
    newest = next((r for r in results if r.method == "newest"), None)
    if newest is None or newest.dev_scores is None:
        return
    for r in results:
        if r.dev_scores is not None:
            r.gain = session.bootstrap.objective_gain(session.objective, r.dev_scores, newest.dev_scores)
        if r.test_scores is not None and newest.test_scores is not None:
            r.test_gains = gains_by_metric(session.bootstrap, hib, r.test_scores, newest.test_scores)


def _tables(
    results: list[MethodResult], baseline: float | None, objective: str, confidence: float
) -> tuple[str, str, list[str], list[list[str]]]:
    """Markdown, CSV, and the header and rows of the printed table.

    Markdown and the printed table mark a test value ``*`` when it differs significantly from the newest
    checkpoint's (paired); the CSV has every interval as columns.
    """
    test_keys = sorted({k for r in results for k in r.test_metrics})
    pct = f"{confidence:.0%}"
    header = [
        "method",
        "dev objective",
        "gain vs newest",
        f"{pct} CI",
        "p",
        *test_keys,
        "evaluations",
        "seconds",
        "documents",
    ]
    csv_header = [
        "method",
        "dev objective",
        "gain vs newest",
        "gain ci_low",
        "gain ci_high",
        "gain p_value",
        "gain significant",
        *[f"{k}{s}" for k in test_keys for s in ("", " gain", " ci_low", " ci_high", " significant")],
        "evaluations",
        "seconds",
        "documents",
    ]
    rows, csv_rows = [], []
    for r in results:
        g = r.gain
        gain = g.value if g else (r.objective - baseline if baseline is not None else float("nan"))
        mark = "*" if g and g.significant else ""
        ci = f"[{g.ci_low:+.5f}, {g.ci_high:+.5f}]" if g else "-"
        significant = {k for k, tg in r.test_gains.items() if tg.significant}
        tests = [f"{r.test_metrics.get(k, float('nan')):.5g}{'*' if k in significant else ''}" for k in test_keys]
        rows.append(
            [
                r.method,
                f"{r.objective:.5f}",
                f"{gain:+.5f}{mark}",
                ci,
                f"{g.p_value:.3g}" if g else "-",
                *tests,
                str(r.evaluations),
                f"{r.seconds:.1f}",
                str(r.documents),
            ]
        )
        cells = []
        for k in test_keys:
            tg = r.test_gains.get(k)
            cells += [
                f"{r.test_metrics.get(k, float('nan')):.6g}",
                *(
                    [f"{tg.value:.6g}", f"{tg.ci_low:.6g}", f"{tg.ci_high:.6g}", str(tg.significant).lower()]
                    if tg
                    else ["", "", "", ""]
                ),
            ]
        csv_rows.append(
            [
                r.method,
                f"{r.objective:.6f}",
                f"{gain:.6f}",
                *(
                    [f"{g.ci_low:.6f}", f"{g.ci_high:.6f}", f"{g.p_value:.4g}", str(g.significant).lower()]
                    if g
                    else ["", "", "", ""]
                ),
                *cells,
                str(r.evaluations),
                f"{r.seconds:.1f}",
                str(r.documents),
            ]
        )
    md = [
        f"Dev objective: `{objective}` (higher is better). Gains are paired against `newest` on the same documents, "
        f"with {pct} bootstrap intervals; `*` marks a significant difference, the rest is within noise.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(csv_header)
    w.writerows(csv_rows)
    return "\n".join(md) + "\n", buf.getvalue(), header, rows


def _bar_chart(results: list[MethodResult], baseline: float | None) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 * len(results) + 3, 4))
    vals = [r.objective - (baseline or 0.0) for r in results]
    ax.bar([r.method for r in results], vals, color=["C2" if v > 0 else "C3" for v in vals])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("dev objective gain over the newest checkpoint" if baseline is not None else "dev objective")
    ax.set_title("compare: merge methods on the same checkpoints")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return fig


def check_methods(cfg: Config) -> None:
    """Each method's needs, before the study starts: a check that could fail after the other methods
    ran (every setting, calibration text for a calibration method) fails before the first evaluation.
    The embedded trajectory brings its own calibration text; local checkpoints need
    ``compare.calibration_path``, and the file is read now (missing, empty) rather than when its method runs."""
    for name in cfg.compare.methods:
        if searched_method(name) is not None:
            continue
        cfg.compare.method_settings(name)  # a bad compare.settings.NAME fails now
        if merge_method(name).calibration is None:
            continue
        if cfg.compare.calibration_path:
            read_texts(Path(cfg.compare.calibration_path).expanduser())
        elif cfg.model.source != "embedded":
            raise ConfigError(
                f"compare.calibration_path is needed for {name} (a JSONL file with a 'text' field, never dev "
                f"or test text); set it, or leave {name} out of compare.methods"
            )


def run_compare(cfg: Config, run_dir: Path, cwd: Path, config_yaml: str = "") -> dict[str, Any]:
    """Run ``compare.methods``; write ``compare.{md,csv,png,json}`` into ``run_dir``."""
    from rich.console import Console
    from rich.table import Table

    check_methods(cfg)
    study = start_study(cfg, cwd, config_yaml, "compare", last=cfg.compare.last)
    tracker, sources, session, resident, parent = (
        study.tracker,
        study.sources,
        study.session,
        study.resident,
        study.run_id,
    )
    cset = sources.cset
    comp = Comparison(cfg, tracker, session, resident, sources.calib_path)
    snapshot: dict[str, torch.Tensor] | None = None  # the best non-linear merge's parameters, to register it
    snapshot_of = ""  # the method whose merge the snapshot holds
    with tracker.finishing():
        done = finished_methods(tracker, parent) if study.resumed else {}
        by_method: dict[str, MethodResult] = {}
        for method in cfg.compare.methods:
            if method in done:  # a resumed comparison: this method finished before the process died
                by_method[method] = done[method]
                log.info("%s: reused from run %s (objective %.5f)", method, done[method].run_id, done[method].objective)
        todo = [m for m in cfg.compare.methods if m not in done]
        in_process = False

        def finished(r: MethodResult) -> None:
            nonlocal snapshot, snapshot_of
            by_method[r.method] = r
            # this process's resident model holds the merge only when it ran here (not on a Ray worker)
            best_so_far = r.objective >= max(x.objective for x in by_method.values())
            if cfg.compare.register and r.weights is None and in_process and best_so_far:
                snapshot = {k: v.detach().clone() for k, v in resident.model.state_dict().items()}
                snapshot_of = r.method

        if todo:
            # the baselines at once over the workers, then each search's trials over them (runtime=ray);
            # one after another in this process otherwise
            with make_executor(cfg, resident, session, study=True, last=cfg.compare.last) as executor:
                in_process = isinstance(executor, InProcessExecutor)
                comp.run_all(todo, executor, finished)
        results = [by_method[m] for m in cfg.compare.methods]  # the table's rows in the configured order
        if done:
            log.info("Resumed compare %s: %d of %d methods reused", parent, len(done), len(cfg.compare.methods))
        baseline = next((r.objective for r in results if r.method == "newest"), None)
        hib = _test_higher_is_better(session)
        add_gains(results, session, hib)
        for r in results:
            if r.gain is not None:
                tracker.log_metrics(r.gain.as_metrics(names.METRIC_GAIN), run_id=r.run_id)
        md, csv_text, header, rows = _tables(results, baseline, session.objective.describe(), cfg.eval.confidence)
        best = max(results, key=lambda r: r.objective if math.isfinite(r.objective) else -math.inf)
        head_to_head_results = head_to_heads(results, session.bootstrap, session.objective, hib, set(baseline_names()))
        if head_to_head_results:
            md += "\nWhich won, paired on the same documents:\n\n" + "".join(
                f"- {v.describe()}\n" for v in head_to_head_results
            )
        no_head_to_head = (
            f"No paired head-to-head: {best.method} has no per-document dev scores to pair with another method."
            if not head_to_head_results and len(results) > 1 and best.dev_scores is None
            else ""
        )
        if no_head_to_head:
            md += f"\n{no_head_to_head}\n"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "compare.md").write_text(md)
        (run_dir / "compare.csv").write_text(csv_text)
        fig = _bar_chart(results, baseline)
        fig.savefig(run_dir / "compare.png", dpi=120)
        tracker.log_figure(parent, fig, "compare.png")
        tracker.log_text(parent, md, "compare.md")
        tracker.log_text(parent, csv_text, "compare.csv")
        tracker.log_metrics({names.METRIC_BEST_OBJECTIVE: best.objective})
        tracker.set_tags({"ckptmerge.best_method": best.method})
        out: dict[str, Any] = {
            "objective_definition": session.objective.describe(),
            "checkpoints": cset.names,
            "best_method": best.method,
            "best_against": [v.as_json() for v in head_to_head_results],
            "baseline_objective": baseline,
            "methods": [r.as_json() for r in results],
            "mlflow": {"tracking_uri": tracker.display_uri, "experiment_id": tracker.experiment_id, "run_id": parent},
            "registered_model": None,
        }
        if cfg.compare.register:
            from ckptmerge.session.register import register_merge

            if best.weights is not None:
                resident.apply(list(best.weights.values()))
            elif snapshot is not None and snapshot_of == best.method:
                resident.model.load_state_dict(snapshot)
            else:  # the best was reused from a resumed run: its merge is made again (the same seed, the same merge)
                seed_everything(cfg.search.seed, cfg.runtime.threads)
                comp.registered(best.method)
            reg = register_merge(
                cfg.merge,
                cfg.registry,
                tracker,
                session,
                resident,
                best.weights,
                best.objective,
                run_dir / "merged",
                description=f"Best of ckptmerge compare: {best.method}",
                tags={"method": best.method},
            )
            out["registered_model"] = reg
            out["output_dir"] = str(run_dir / "merged")
        out = redact_data(json.loads(json.dumps(out, default=str)))  # no password or token in the run folder
        (run_dir / "compare.json").write_text(json.dumps(out, indent=2))
        tracker.log_text(parent, json.dumps(out, indent=2, default=str), "compare.json")

    console = Console(width=200)
    table = Table(title=f"compare on {', '.join(cset.names)} — {session.objective.describe()} (higher is better)")
    for h in header:
        table.add_column(h, justify="left" if h == "method" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if best.gain is not None:
        from ckptmerge.report import gain_text

        console.print(f"best: {best.method}, dev gain over newest {gain_text(best.gain.as_json())}")
    for v in head_to_head_results:
        console.print(v.describe())
    if no_head_to_head:
        console.print(no_head_to_head)
    console.print(f"tables and chart: {run_dir}/compare.{{md,csv,png}}; MLflow run {parent}")
    return out


def run(cfg: Config, context: Any) -> dict[str, Any]:
    """``action=compare``."""
    return run_compare(cfg, context.run_dir, context.cwd, context.config_yaml)
