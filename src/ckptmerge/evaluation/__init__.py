"""Evaluation through lm-evaluation-harness: the task suite adapter and the objective."""

from __future__ import annotations

from ckptmerge.evaluation.harness import TaskInfo, TaskSuite, make_lm, metric_name
from ckptmerge.evaluation.objective import Objective, ObjectiveTerm, build_objective

__all__ = ["TaskInfo", "TaskSuite", "make_lm", "metric_name", "Objective", "ObjectiveTerm", "build_objective"]
