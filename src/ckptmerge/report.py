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


def gain_text(gain: dict[str, Any], compact: bool = False) -> str:
    """``+0.01704, 95% CI [+0.0093, +0.0251], p=0.001: significant``, or ``...: within noise``;
    ``compact`` (a table cell): ``+0.01704 [+0.0093, +0.0251] *`` where ``*`` marks a significant one."""
    if gain.get("ci_low") is None or gain["ci_low"] != gain["ci_low"]:  # NaN: too few finite resamples
        return f"{_num(gain['value'])} (no interval)"
    ci = f"[{_num(gain['ci_low'])}, {_num(gain['ci_high'])}]"
    if compact:
        return f"{_num(gain['value'])} {ci} {'*' if gain['significant'] else ' '}"
    mark = "significant" if gain["significant"] else "within noise"
    return f"{_num(gain['value'])}, {gain.get('confidence', 0.95):.0%} CI {ci}, p={gain['p_value']:.3g}: {mark}"


def _num(x: float) -> str:
    return f"{x:+.5f}" if abs(x) < 1e4 else f"{x:+.4g}"


def cost_line(cost: dict[str, Any]) -> str:
    """``cost: 6 evaluations, 300 documents, 61,440 tokens, 12.3 s of evaluation; saved 40% of ...``:
    what the search's dev evaluations spent (result.json's ``cost``, session/cost.py)."""
    saved = cost.get("saved_fraction")
    tail = f"; saved {saved:.0%} of the full budget on every document" if saved is not None else ""
    note = f" ({cost['incomplete']} trials without a record)" if cost.get("incomplete") else ""
    raced = f" ({cost['raced_out']} raced out)" if cost.get("raced_out") else ""
    return (
        f"[bold]cost[/bold]: {cost['evaluations']} evaluations{raced}, {cost['documents']:,} documents, "
        f"{cost['tokens']:,} tokens, {cost['seconds']:.1f} s of evaluation{tail}{note}"
    )


def mlflow_ui_command(tracking_uri: str) -> str:
    tracking_uri = redact(tracking_uri)  # a password in the URI is not printed
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def runs_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs in the UI that :func:`mlflow_ui_command` opens (``mlflow ui``: port 5000)."""
    from ckptmerge.tracking.description import MLFLOW_UI_DEFAULT, ui_url

    tracking_uri = redact(tracking_uri)
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else MLFLOW_UI_DEFAULT
    return ui_url(base, experiment_id)


def print_search_summary(result: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    """Best λ, dev objective against the newest checkpoint alone, test metrics, MLflow and registry."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    base, best = result.get("baseline_objective"), result["objective"]
    newest = list(result["weights"])[-1]
    se = f" ± {result['objective_se']:.5f} (s.e.)" if result.get("objective_se") is not None else ""
    weights = ", ".join(f"{n}: {w:.4f}" for n, w in result["weights"].items())
    if result.get("lambda") is not None:
        console.print(f"[bold]best λ[/bold] = {result['lambda']:.4f}   weights {{{weights}}}")
    else:
        space = result.get("space") or {}
        at = ", ".join(f"{c}={v:.4g}" for c, v in space.get("point", {}).items())
        where = f"   ({space['name']} at {at})" if space.get("name") and at else ""
        console.print(f"[bold]best weights[/bold] {{{weights}}}{where}")
    console.print(
        f"[bold]dev objective[/bold] = {_fmt(best)}{se}   [{result.get('objective_definition', '')}]"
        f"   chosen by {result.get('selected_by', 'observed')}"
    )
    if result.get("gain"):
        console.print(f"[bold]dev gain[/bold] over {newest} alone ({_fmt(base)}): {gain_text(result['gain'])}")
    tests = {"best merge": result.get("test_metrics", {}), **result.get("test_metrics_by_checkpoint", {})}
    keys = sorted({k for m in tests.values() for k in m})
    if keys:
        gains = result.get("test_gains", {})
        table = Table(title="test metrics")
        table.add_column("metric")
        for who in tests:
            table.add_column(who, justify="right")
        pct = f"{next(iter(gains.values()))['confidence']:.0%}" if gains else ""
        table.add_column(f"merge vs {newest}, {pct} CI", justify="right")
        for k in keys:
            table.add_row(
                k, *[_fmt(tests[w].get(k)) for w in tests], gain_text(gains[k], compact=True) if k in gains else "-"
            )
        console.print(table)
        if gains:
            console.print(f"gains: + means the merge is better; * significant at {pct}, the rest within noise")
    stopped = result.get("stopped") or {}
    if stopped.get("reason") == "converged":
        crit = stopped.get("criterion") or {}
        why = (
            f": best expected improvement {crit['max_expected_improvement_in_se']:.3g} s.e. < "
            f"{crit['stop_margin']:g}, {crit['patience']} in a row"
            if crit
            else ""
        )
        console.print(f"[bold]converged[/bold] after {stopped['after']} of {stopped['of']} evaluations{why}")
    if result.get("cost"):
        console.print(cost_line(result["cost"]))
    if result.get("decision_reason"):
        console.print(f"[bold]decision[/bold]: {result['decision']}: {result['decision_reason']}")
    ml = result["mlflow"]
    console.print(f"MLflow run {ml['run_id']} (experiment {ml['experiment_id']})")
    reg = result.get("registered_model")
    if reg:
        console.print(
            f"registered model [bold]{reg['name']}[/bold] version {reg['version']} (alias {reg.get('alias', '')})"
        )
    if result.get("decision") == "keep-newest":  # written and verified, but not shown to be better
        console.print(
            f"merged checkpoint (not better than {newest} beyond noise; not registered): {result['output_dir']}"
        )
    else:
        console.print(f"merged checkpoint: {result['output_dir']}")
    console.print(f"result: {Path(run_dir) / 'result.json'}")
    console.print(f"see it: {mlflow_ui_command(ml['tracking_uri'])}")
    console.print(f"runs:   {runs_url(ml['tracking_uri'], ml['experiment_id'])}", soft_wrap=True)
