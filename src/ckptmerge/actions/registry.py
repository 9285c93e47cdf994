"""The actions ``action=NAME`` runs: one table, read by config validation, ``ckptmerge.cli`` and the docs.

Every action is a function ``run(cfg, context) -> dict``; ``ckptmerge.cli`` dispatches through this
registry and writes the returned dict as ``result.json`` in the run directory, with the fields every
action's result shares (``action``, and ``mlflow``, ``output_dir``, ``registered_model`` where the
action has them). Entries name their function as ``module:function`` and are imported only when run,
so validating a config never loads torch or lm-eval. A new action is one module and one line here
(or ``ACTIONS.register(name)(Action(...))`` from a user's own launcher).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptmerge.registry import Registry

if TYPE_CHECKING:
    from ckptmerge.runtime.distributed import Channel


@dataclass(frozen=True)
class ActionContext:
    """Where an action runs: its Hydra run folder, the user's working directory, the composed config,
    and under ``runtime=deepspeed`` the launch's command channel to the other ranks (rank 0 holds it)."""

    run_dir: Path
    cwd: Path
    config_yaml: str = ""
    channel: Channel | None = None


@dataclass(frozen=True)
class Action:
    name: str
    target: str  # "module:function", the function is run(cfg, context) -> dict
    summary: str
    deepspeed: bool = False  # runs under runtime=deepspeed (its model partitioned over the ranks)
    ray: bool = False  # runs under runtime=ray (its independent evaluations spread over Ray workers)

    def load(self) -> Callable[..., dict[str, Any]]:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


ACTIONS: Registry[Action] = Registry("action", "action")


def _add(name: str, target: str, summary: str, deepspeed: bool = False, ray: bool = False) -> None:
    ACTIONS.register(name)(Action(name, target, summary, deepspeed, ray))


_add(
    "search",
    "ckptmerge.actions.search:run",
    "search the merge weights, write, verify and register the best",
    True,
    ray=True,
)
_add("merge", "ckptmerge.actions.merge:run", "write the merge at given weights (streamed, atomic)", True)
_add("pilot", "ckptmerge.actions.pilot:run", "every checkpoint alone and every pair at one λ", ray=True)
_add("compare", "ckptmerge.actions.compare:run", "every baseline and search space on the same budget", ray=True)
_add("promote", "ckptmerge.actions.promote:run", "candidate vs champion on the same documents; move the alias", True)
_add(
    "watch",
    "ckptmerge.actions.watch:run",
    "search each new pair of complete checkpoints while training runs",
    ray=True,
)
