"""The lm-eval tasks a run evaluated, as MLflow datasets (the run's "Datasets" in the UI).

One dataset per leaf task: its name, the documents actually scored (the seeded ``eval.limit`` sample or
all), a digest of their content, and a Hugging Face source saying where lm-eval loaded them from and
which split. MLflow's own pandas digest skips list columns (a multiple-choice task's ``choices``), so the
digest is computed here over every field of every scored document.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

CONTEXT_DEV, CONTEXT_TEST = "dev", "test"  # the input's mlflow.data.context: what the run did with it
_DIGEST_CHARS = 16  # MLflow keeps at most 36


def content_digest(docs: Sequence[Mapping[str, Any]]) -> str:
    """sha256 over the documents in order, each as canonical JSON: equal only for the same scored content."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:_DIGEST_CHARS]


def _split(task: Any) -> str:
    c = task.config
    if task.has_test_docs():
        return str(c.test_split)
    return str(c.validation_split if task.has_validation_docs() else c.training_split)


def task_dataset(name: str, task: Any, indices: Sequence[int] | None) -> Any:
    """The MLflow dataset of one lm-eval task: the documents of ``indices`` (None: every document)."""
    import pandas as pd
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.pandas_dataset import from_pandas

    docs_all = task.eval_docs
    picked = range(len(docs_all)) if indices is None else indices
    docs = [dict(docs_all[int(i)]) for i in picked]
    # Scalars stay columns MLflow can profile; lists and dicts (choices, nested fields) become JSON text.
    rows = [
        {
            k: v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, default=str)
            for k, v in d.items()
        }
        for d in docs
    ]
    c = task.config
    kwargs = dict(c.dataset_kwargs or {})
    source = HuggingFaceDatasetSource(
        path=str(c.dataset_path), config_name=c.dataset_name, data_files=kwargs.get("data_files"), split=_split(task)
    )
    with _no_integer_column_hint():
        return from_pandas(pd.DataFrame(rows), source=source, name=name, digest=content_digest(docs))


@contextlib.contextmanager
def _no_integer_column_hint() -> Iterator[None]:
    """MLflow's hint about integer columns concerns model signatures, not logged inputs; it is printed
    when a dataset's schema is inferred (lazily, when it is turned into an entity), once per task."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column", category=UserWarning)
        yield


def suite_datasets(task_objects: Mapping[str, Any], samples: Mapping[str, Sequence[int]] | None) -> list[Any]:
    """One dataset per task of a suite; a task whose documents cannot be read is left out with a warning
    (what the UI shows must never stop a search)."""
    out = []
    for name, task in task_objects.items():
        try:
            out.append(task_dataset(name, task, None if samples is None else samples.get(name)))
        except Exception as e:  # noqa: BLE001 - presentation only
            log.warning(
                "task %s is not logged as an MLflow dataset: %s",
                name,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
    return out


def dataset_inputs(datasets: Sequence[Any], context: str) -> list[Any]:
    """``DatasetInput`` entities for ``MlflowClient.log_inputs``, tagged with their context (dev | test)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with _no_integer_column_hint():
        return [DatasetInput(d._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]) for d in datasets]
