"""A compared method's merge and its scores (``action=compare``), as a job any executor can run.

A baseline (a registered merge method) is merged into a resident model and scored on the dev and test
tasks by :class:`BaselineJob`; a searched method's chosen weights are scored on the test tasks by
:class:`TestReportJob`. Both are plain picklable objects called with the resident model and evaluation session
of wherever they run (session/executor.py): this process, or a Ray worker that built the same
checkpoints and tasks (runtime/ray_workers.py), so the two give the same numbers. A calibration method
(Fisher, RegMean) computes its statistics there too, on the worker's own model and the calibration text
at ``calib_path``: no tensor passes through the driver.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckptmerge.calibration import read_texts
from ckptmerge.config import Config
from ckptmerge.errors import ConfigError
from ckptmerge.evaluation.doc_scores import DocScores, documents
from ckptmerge.merge import linear_merge
from ckptmerge.merge import method as merge_method
from ckptmerge.merge.soups import uniform_weights
from ckptmerge.resident import ResidentModel
from ckptmerge.runtime import seed_everything
from ckptmerge.session.evaluation import EvalSession


@dataclass
class MethodOutcome:
    """What one baseline's merge gave, where it ran (sent back to the driver, which logs it)."""

    weights: list[float] | None  # None for merges that are not linear (Fisher, RegMean, per-tensor functions)
    objective: float
    dev_metrics: dict[str, float]
    dev_scores: DocScores | None
    test_metrics: dict[str, float]
    test_scores: DocScores | None
    evaluations: int  # dev evaluations spent (a greedy soup scores several weightings)
    documents: int  # dev documents scored
    seconds: float  # the merge and its dev scoring (not the test report)


class MethodMerger:
    """Runs a registered merge method into the resident model and scores it on dev."""

    def __init__(self, cfg: Config, session: EvalSession, resident: ResidentModel, calib_path: Path | None) -> None:
        self.cfg, self.session, self.resident = cfg, session, resident
        self.k = len(resident.cset.names)
        self.calib_path = calib_path
        self._texts: list[str] | None = None
        self.evaluations = 0
        self.documents = 0  # dev documents scored for the current method
        self.scores: DocScores | None = None  # per-document dev scores of the method's merge

    def _score(self) -> tuple[float, dict[str, float]]:
        metrics, self.scores = self.session.evaluate_with_scores("dev")
        self.evaluations += 1
        self.documents += documents(self.scores)
        return self.session.objective(metrics), metrics

    def _onehot(self, i: int) -> list[float]:
        return [1.0 if j == i else 0.0 for j in range(self.k)]

    def _calibration(self, method: str) -> list[str]:
        if self._texts is None:
            path = self.cfg.compare.calibration_path or self.calib_path
            if path is None:
                raise ConfigError(
                    f"compare.calibration_path is needed for {method} (a JSONL file with a 'text' "
                    "field, never dev or test text)"
                )
            self._texts = read_texts(Path(path))
        return self._texts

    def _max_length(self) -> int:
        configured = getattr(self.resident.model.config, "max_position_embeddings", None)
        return int(self.session.sources.max_length or configured or 512)

    def _per_checkpoint(self, method: str, statistic: Callable[..., dict], tokens: int) -> list[dict]:
        """``statistic(model, tokenizer, texts, tokens, max_length)`` of each checkpoint, loaded in turn."""
        texts = self._calibration(method)
        out = []
        for i in range(self.k):
            self.resident.apply(self._onehot(i))
            out.append(statistic(self.resident.model, self.resident.tokenizer, texts, tokens, self._max_length()))
        return out

    def registered(self, name: str) -> tuple[list[float] | None, float, dict]:
        """Merge method ``name`` from the registry into the resident model, scored on dev."""
        m = merge_method(name)
        settings = self.cfg.compare.method_settings(name)
        uniform = uniform_weights(self.k)
        if m.weighting is not None:
            return self._weighting(m.weighting, settings)
        if m.calibration is not None:
            cal = m.calibration
            stats = self._per_checkpoint(name, cal.statistic, settings.tokens)

            def merge(key: str, srcs: list[torch.Tensor]) -> torch.Tensor:
                out = cal.merge(key, srcs, stats, settings)
                return linear_merge(srcs, uniform) if out is None else out

            self.resident.apply_fn(merge)
            return (None, *self._score())
        # a function of the tensors and weights: here with uniform weights over the compared checkpoints
        fn = m.bind(dataclasses.asdict(settings))
        self.resident.apply_fn(lambda key, srcs: fn(srcs, uniform, srcs[0].dtype))
        return (None, *self._score())

    def _weighting(self, rule: Callable[..., list[float]], settings: Any) -> tuple[list[float] | None, float, dict]:
        """A weighting rule's weights merged linearly; the weightings it scored on the way (greedy soup)
        are not scored again."""
        seen: dict[tuple[float, ...], tuple[float, dict[str, float], DocScores | None]] = {}

        def evaluate(weights: list[float]) -> float:
            self.resident.apply(weights)
            objective, metrics = self._score()
            seen[tuple(weights)] = (objective, metrics, self.scores)
            return objective

        w = [float(x) for x in rule(self.k, settings, evaluate)]
        if tuple(w) in seen:
            objective, metrics, self.scores = seen[tuple(w)]
            self.resident.apply(w)  # the resident model holds the method's merge
        else:
            self.resident.apply(w)
            objective, metrics = self._score()
        return w, objective, metrics


def score_test(session: EvalSession) -> tuple[dict[str, float], DocScores | None]:
    """The resident model's test metrics and per-document scores (none without test tasks)."""
    return session.evaluate_with_scores("test") if session.test else ({}, None)


@dataclass
class BaselineJob:
    """Baseline ``method``: merged from the seed every method starts from, scored on dev, then on test.
    The resident model holds the merge afterwards."""

    cfg: Config
    method: str
    calib_path: Path | None

    def __call__(self, resident: ResidentModel, session: EvalSession) -> MethodOutcome:
        seed_everything(self.cfg.search.seed)  # each method starts from the same seed (threads as they are)
        merger = MethodMerger(self.cfg, session, resident, self.calib_path)
        t0 = time.perf_counter()
        weights, objective, dev = merger.registered(self.method)
        seconds = time.perf_counter() - t0
        test, test_scores = score_test(session)
        return MethodOutcome(
            weights, objective, dev, merger.scores, test, test_scores, merger.evaluations, merger.documents, seconds
        )


@dataclass
class TestReportJob:
    """The test report of the resident model merged at ``weights`` (a searched method's choice)."""

    weights: list[float]

    def __call__(self, resident: ResidentModel, session: EvalSession) -> tuple[dict[str, float], DocScores | None]:
        resident.apply(self.weights)
        return score_test(session)
