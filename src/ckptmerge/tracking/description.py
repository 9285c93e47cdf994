"""What MLflow's UI shows as a search's description (markdown) and as its model version's description.

Both are built from the same :class:`~ckptmerge.interop.facts.MergeFacts` as the model card, so that the
run, the registry and the merged folder say the same thing.
"""

from __future__ import annotations

from urllib.parse import quote

from ckptmerge.interop.facts import MergeFacts

# MLflow 3.17's UI picks an experiment's page from its "workflow type" (the GenAI / Model training switch,
# kept in the browser, GenAI by default), not from the experiment's mlflow.experimentKind tag; a link
# that names the type opens the runs, and the switch stays there for the user's next visits.
UI_WORKFLOW = "workflowType=machine_learning"
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The page of an experiment's runs (or of one run) in MLflow's UI at ``base``, as model training."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}/{page}?{UI_WORKFLOW}"


def artifact_link(run_id: str, path: str) -> str:
    """A link MLflow's UI serves: relative to the UI's root, so it works behind any host and port."""
    return f"get-artifact?path={quote(path)}&run_uuid={run_id}"


def run_note(facts: MergeFacts, run_id: str | None = None, running: bool = False) -> str:
    """The parent run's description: checkpoints, objective, best weights, gain, decision, version, plot."""
    ckpts = " → ".join(f"`{c['name']}`" for c in facts.checkpoints)
    lines = [f"**ckptmerge search** over {ckpts} (oldest → newest)", ""]
    if facts.objective_definition:
        lines.append(f"- **Objective** (dev, higher is better): `{facts.objective_definition}`")
    if running:
        lines += ["- **Status**: searching; each trial is a child run (`lambda`, `objective`)", ""]
        return "\n".join(lines)
    lam = facts.lam
    best = facts.weights_text() + (f" (λ = {lam:.4f})" if lam is not None else "")
    lines.append(
        f"- **Best weights**: {best}" + (f", objective {facts.objective:.6f}" if facts.objective is not None else "")
    )
    gain = facts.gain_text()
    lines.append(
        f"- **Gain over `{facts.newest}`**: {gain}" if gain else f"- **Gain over `{facts.newest}`**: not measured"
    )
    if facts.decision:
        lines.append(
            f"- **Decision**: {facts.decision}" + (f" — {facts.decision_reason}" if facts.decision_reason else "")
        )
    if facts.registered:
        r = facts.registered
        lines.append(f"- **Registered**: `{r['name']}` version {r['version']} (alias `{r.get('alias', '')}`)")
    else:
        lines.append("- **Registered**: nothing")
    if facts.plot_artifact and run_id:
        lines += [
            "",
            f"GP posterior over λ (artifact `{facts.plot_artifact}`):",
            "",
            f"![GP posterior]({artifact_link(run_id, facts.plot_artifact)})",
        ]
    return "\n".join(lines) + "\n"


def version_description(facts: MergeFacts) -> str:
    """The model version's description: the same facts, in brief (plain text)."""
    parts = [f"Merge {facts.weights_text()} of adjacent checkpoints, found by ckptmerge"]
    if facts.search:
        parts[0] += f" ({facts.search.get('kind')}, {facts.search.get('budget')} evaluations)"
    if facts.objective is not None and facts.objective_definition:
        parts.append(f"dev objective {facts.objective:.5f} ({facts.objective_definition})")
    gain = facts.gain_text()
    if gain:
        parts.append(f"gain over {facts.newest} {gain}")
    if facts.decision_reason:
        parts.append(f"decision: {facts.decision} — {facts.decision_reason}")
    if facts.mlflow:
        parts.append(f"search run {facts.mlflow.get('run_id')}")
    return "; ".join(parts) + "."
