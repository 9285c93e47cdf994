"""Terminal summaries (rich tables) of what an action did."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ckptmerge.tracking.secrets import redact


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.5f}" if abs(x) < 1e4 else f"{x:.4g}"
    return "-" if x is None else str(x)


def mlflow_ui_command(tracking_uri: str) -> str:
    tracking_uri = redact(tracking_uri)  # a password in the URI is not printed
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def print_search_summary(result: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    """Best λ, dev objective against the newest checkpoint alone, test metrics, MLflow and registry."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    base, best = result.get("baseline_objective"), result["objective"]
    gain = f" ({best - base:+.5f} vs newest alone: {_fmt(base)})" if base is not None else ""
    weights = ", ".join(f"{n}: {w:.4f}" for n, w in result["weights"].items())
    if result.get("lambda") is not None:
        console.print(f"[bold]best λ[/bold] = {result['lambda']:.4f}   weights {{{weights}}}")
    else:
        console.print(f"[bold]best weights[/bold] {{{weights}}}")
    console.print(f"[bold]dev objective[/bold] = {_fmt(best)}{gain}   [{result.get('objective_definition', '')}]")
    tests = {"best merge": result.get("test_metrics", {}), **result.get("test_metrics_by_checkpoint", {})}
    keys = sorted({k for m in tests.values() for k in m})
    if keys:
        table = Table(title="test metrics")
        table.add_column("metric")
        for who in tests:
            table.add_column(who, justify="right")
        for k in keys:
            table.add_row(k, *[_fmt(tests[w].get(k)) for w in tests])
        console.print(table)
    ml = result["mlflow"]
    console.print(f"MLflow run {ml['run_id']} (experiment {ml['experiment_id']})")
    reg = result.get("registered_model")
    if reg:
        console.print(f"registered model [bold]{reg['name']}[/bold] version {reg['version']} (alias {reg.get('alias', '')})")
    console.print(f"merged checkpoint: {result['output_dir']}")
    console.print(f"result: {Path(run_dir) / 'result.json'}")
    console.print(f"see it: {mlflow_ui_command(ml['tracking_uri'])}")
