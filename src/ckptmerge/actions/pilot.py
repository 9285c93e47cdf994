"""``action=pilot``: the paper's pilot study for your own trajectory.

Every checkpoint alone and every pair (older i, newer j) merged at λ=``pilot.lam`` are evaluated on the
dev tasks; the gain of each pair over its newer checkpoint goes into a heatmap, a markdown table and
a CSV, logged to one MLflow run and printed, so a user sees which pairs are worth a search (adjacent
pairs, in the paper).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ckptmerge.config import Config
from ckptmerge.errors import EvaluationError
from ckptmerge.session.executor import Evaluation, run_all
from ckptmerge.session.executors import make_executor
from ckptmerge.session.study import start_study
from ckptmerge.tracking import names

log = logging.getLogger(__name__)


def heatmap_figure(labels: list[str], gains: np.ndarray, lam: float) -> Any:
    """Gain of each merged pair over its newer checkpoint; rows older, columns newer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    finite = gains[np.isfinite(gains)]
    span = float(np.abs(finite).max()) if finite.size else 1.0
    im = ax.imshow(gains, cmap="RdYlGn", vmin=-span, vmax=span)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("newer checkpoint")
    ax.set_ylabel("older checkpoint")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if np.isfinite(gains[i, j]):
                ax.text(j, i, f"{gains[i, j]:+.4f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="objective gain over the newer checkpoint")
    ax.set_title(f"pilot: pairs merged at λ={lam:g} (higher is better)")
    fig.tight_layout()
    return fig


def run_pilot(cfg: Config, run_dir: Path, cwd: Path, config_yaml: str = "") -> dict[str, Any]:
    """Evaluate singles and λ-merged pairs; write ``pilot.md``/``pilot.csv``/``pilot.png`` into ``run_dir``."""
    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    study = start_study(cfg, cwd, config_yaml, "pilot")
    tracker, cset, session, resident, run_id = study.tracker, study.cset, study.session, study.resident, study.run_id
    lam, n = float(cfg.pilot.lam), len(cset)
    with tracker.finishing():
        total = n + n * (n - 1) // 2
        # a resumed pilot's evaluations are its run's metrics: each one logged is reused, not evaluated again
        done = tracker.client.get_run(run_id).data.metrics if study.resumed else {}
        reused = 0
        objectives: dict[str, float] = {}

        def single(i: int) -> str:
            return f"single.{cset.names[i]}.objective"

        def pair(i: int, j: int) -> str:
            return f"pair.{cset.names[i]}.{cset.names[j]}.objective"

        jobs: list[tuple[str, list[float]]] = [
            (single(i), [1.0 if j == i else 0.0 for j in range(n)]) for i in range(n)
        ]
        for j in range(n):
            for i in range(j):
                w = [0.0] * n
                w[i], w[j] = 1.0 - lam, lam
                jobs.append((pair(i, j), w))
        for key, _ in jobs:
            if names.safe_key(key) in done:
                reused += 1
                objectives[key] = float(done[names.safe_key(key)])
        bar = tqdm(total=total, initial=reused, desc="pilot", unit="eval")

        def finished(key: Any, ev: Evaluation) -> None:
            if ev.error is not None:
                raise EvaluationError(f"pilot: evaluating {key} failed: {ev.error}")
            objectives[key] = session.objective(ev.metrics)
            tracker.log_metrics({key: objectives[key]})
            bar.update(1)

        # independent evaluations: spread over the workers under runtime=ray, one after another otherwise
        with make_executor(cfg, resident, session, study=True) as executor:
            run_all(executor, [job for job in jobs if job[0] not in objectives], finished)
        singles = [objectives[single(i)] for i in range(n)]
        gains = np.full((n, n), np.nan)
        rows = []
        for j in range(n):
            for i in range(j):
                obj = objectives[pair(i, j)]
                gains[i, j] = obj - singles[j]
                rows.append(
                    {
                        "older": cset.names[i],
                        "newer": cset.names[j],
                        "adjacent": j == i + 1,
                        "objective": obj,
                        "newer_objective": singles[j],
                        "gain": gains[i, j],
                    }
                )
                tracker.log_metrics({f"pair.{cset.names[i]}.{cset.names[j]}.gain": gains[i, j]})
        bar.close()
        if study.resumed:
            log.info(
                "Resumed pilot %s: %d of %d evaluations reused, %d done now", run_id, reused, total, total - reused
            )
        md = _markdown(cset.names, singles, rows, lam, session.objective.describe())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "pilot.md").write_text(md)
        (run_dir / "pilot.csv").write_text(buf.getvalue())
        fig = heatmap_figure(cset.names, gains, lam)
        fig.savefig(run_dir / "pilot.png", dpi=120)
        tracker.log_figure(run_id, fig, "pilot_heatmap.png")
        tracker.log_text(run_id, md, "pilot.md")
        tracker.log_text(run_id, buf.getvalue(), "pilot.csv")
        adjacent = [r["gain"] for r in rows if r["adjacent"]]
        tracker.log_metrics(
            {
                "mean_gain_adjacent": float(np.mean(adjacent)),
                "mean_gain_all_pairs": float(np.mean([r["gain"] for r in rows])),
            }
        )

    console = Console(width=160)
    table = Table(
        title=f"pilot: pairs merged at λ={lam:g}; gain over the newer checkpoint ({session.objective.describe()})"
    )
    for col in ("older", "newer", "adjacent", "objective", "newer alone", "gain"):
        table.add_column(col, justify="right" if col not in ("older", "newer") else "left")
    for r in rows:
        table.add_row(
            r["older"],
            r["newer"],
            "yes" if r["adjacent"] else "",
            f"{r['objective']:.5f}",
            f"{r['newer_objective']:.5f}",
            f"{r['gain']:+.5f}",
        )
    console.print(table)
    console.print(f"tables and heatmap: {run_dir}/pilot.{{md,csv,png}}; MLflow run {run_id}")
    return {
        "singles": dict(zip(cset.names, singles)),
        "pairs": rows,
        "lambda": lam,
        "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id, "run_id": run_id},
    }


def _markdown(labels: list[str], singles: list[float], rows: list[dict], lam: float, objective: str) -> str:
    out = [
        f"Objective: `{objective}` (higher is better); pairs merged at λ={lam:g}.",
        "",
        "| checkpoint | objective alone |",
        "|---|---|",
    ]
    out += [f"| {n} | {s:.5f} |" for n, s in zip(labels, singles)]
    out += ["", "| older | newer | adjacent | merged | newer alone | gain |", "|---|---|---|---|---|---|"]
    out += [
        f"| {r['older']} | {r['newer']} | {'yes' if r['adjacent'] else ''} | {r['objective']:.5f} | "
        f"{r['newer_objective']:.5f} | {r['gain']:+.5f} |"
        for r in rows
    ]
    return "\n".join(out) + "\n"


def run(cfg: Config, context: Any) -> dict[str, Any]:
    """``action=pilot``."""
    return run_pilot(cfg, context.run_dir, context.cwd, context.config_yaml)
