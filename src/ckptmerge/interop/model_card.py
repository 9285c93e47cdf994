"""The merged folder's ``README.md``: a Hugging Face model card.

Metadata through ``huggingface_hub.ModelCardData`` (so that the hub reads it: the source checkpoints as
``base_model`` with ``base_model_relation: merge``, and ``model-index`` results for every dev and test
metric), then what a reader needs: the weights and method, the objective and the evidence for the gain,
how the weights were found and how to reproduce them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from ckptmerge import __version__
from ckptmerge.interop.facts import MergeFacts
from ckptmerge.interop.mergekit import CONFIG_FILE

CARD_FILE = "README.md"


def base_model_id(entry: dict[str, str] | Any) -> str:
    """A hub repo id without its revision (the hub's ``base_model`` takes no revision), else the local folder."""
    return entry["model"].split("@")[0] if entry.get("hub") else entry["model"]


def _results(facts: MergeFacts) -> list[Any]:
    from huggingface_hub.repocard_data import EvalResult

    out = []
    for kind, metrics in (("dev", facts.dev_metrics), ("test", facts.test_metrics)):
        for key, value in sorted(metrics.items()):
            task, _, metric = key.partition("/")
            out.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=task,
                    dataset_name=task,
                    dataset_split=facts.task_splits.get(task),
                    metric_type=metric or key,
                    metric_value=float(value),
                    metric_name=f"{metric or key} ({kind})",
                )
            )
    return out


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def reproduce_command(facts: MergeFacts) -> str:
    """``action=merge`` with the same checkpoints and weights (local folders, or hub refs with revision)."""
    models = ",".join(c["model"] for c in facts.checkpoints)
    weights = ",".join(repr(float(w)) for w in facts.weights.values())
    args = [
        "ckptmerge",  # the installed command (a checkout: python src/main.py)
        "action=merge",
        "model=local",
        f"model.checkpoints=[{models}]",
        f"merge.weights=[{weights}]",
        "merge.output_dir=OUTPUT_DIR",
    ]
    if facts.out_dtype:
        args.append(f"merge.dtype={facts.out_dtype}")
    return " ".join(shlex.quote(a) for a in args)


def _body(facts: MergeFacts, model_name: str) -> str:
    parts = [
        f"# {model_name}",
        "",
        f"A weight-space merge of {len(facts.checkpoints)} adjacent pretraining checkpoints, made by ckptmerge "
        f"{__version__}: "
        f"**{facts.weights_text()}** ({facts.method}: Σ wᵢ·θᵢ in fp32, cast to "
        f"{facts.out_dtype or 'the checkpoints’ dtype'}).",
        "",
        "## Merge",
        "",
        _table(
            [(c["name"], f"`{c['model']}`", f"{facts.weights[c['name']]:.6f}") for c in facts.checkpoints],
            ("checkpoint", "source", "weight"),
        ),
    ]
    if facts.objective_definition:
        parts += ["", "## Evidence", "", f"- Objective (dev tasks, higher is better): `{facts.objective_definition}`"]
        if facts.objective is not None:
            parts.append(f"- Objective of this merge: {facts.objective:.6f}")
        gain = facts.gain_text()
        parts.append(
            f"- Gain over {facts.newest} alone (paired bootstrap over documents): {gain}"
            if gain
            else f"- Gain over {facts.newest} alone: not measured"
        )
        if facts.decision:
            parts.append(
                f"- Decision: **{facts.decision}**" + (f" — {facts.decision_reason}" if facts.decision_reason else "")
            )
        if facts.registered:
            r = facts.registered
            parts.append(
                f"- Registered in MLflow as `{r['name']}` version {r['version']} (alias `{r.get('alias', '')}`)"
            )
    rows = [
        (kind, k, f"{v:.6g}")
        for kind, ms in (("dev", facts.dev_metrics), ("test", facts.test_metrics))
        for k, v in sorted(ms.items())
    ]
    if rows:
        parts += ["", "## Results", "", _table(rows, ("split", "task/metric", "value"))]
    if facts.search:
        s = facts.search
        parts += [
            "",
            "## How it was found",
            "",
            f"Search `{s.get('kind')}` over the newest checkpoint's weight λ ∈ [{s.get('alpha', 0)}, 1] "
            f"({s.get('budget')} evaluations, seed {s.get('seed')}); each evaluation merged the checkpoints in "
            "memory and scored the merge on the dev tasks with lm-evaluation-harness.",
        ]
        if facts.mlflow:
            m = facts.mlflow
            parts.append(
                f"Every trial is a child MLflow run of run `{m.get('run_id')}` (experiment {m.get('experiment_id')}, "
                f"store `{m.get('tracking_uri')}`), which also holds the resolved config (`config.yaml`)"
                + (f" and the GP posterior plot (`{facts.plot_artifact}`)." if facts.plot_artifact else ".")
            )
    parts += [
        "",
        "## Reproduce",
        "",
        "With mergekit, from the config in this folder:",
        "",
        f"```bash\nmergekit-yaml {CONFIG_FILE} OUTPUT_DIR\n```",
        "",
        "With ckptmerge:",
        "",
        f"```bash\n{reproduce_command(facts)}\n```",
        "",
    ]
    return "\n".join(parts)


def model_card(facts: MergeFacts) -> str:
    """The text of ``README.md`` for a merged folder.

    The metadata block is ``ModelCardData.to_yaml()``, which is what ``huggingface_hub.ModelCard`` writes
    for it (a fixed point of its parse and re-dump, checked in tests/unit/test_model_card_text.py).
    ``huggingface_hub.repocard_data`` alone is imported: ``ModelCard``'s module pulls in the hub client
    (HTTP, file downloads), about a third of a second of every ``action=merge``'s start-up for nothing.
    """
    from huggingface_hub.repocard_data import ModelCardData

    model_name = "merge of " + " + ".join(facts.weights)
    results = _results(facts)
    data = ModelCardData(
        base_model=[base_model_id(c) for c in facts.checkpoints],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["ckptmerge", "merge", "checkpoint-merging"],
        model_name=model_name,
        eval_results=results or None,
        base_model_relation="merge",
    )
    return f"---\n{data.to_yaml()}\n---\n\n{_body(facts, model_name)}"
