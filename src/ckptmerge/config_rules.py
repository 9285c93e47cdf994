"""The rules of the validation step that come after the schema (see :mod:`ckptmerge.config`):

* each action's own rules across sections (:func:`check_action`): what ``action=merge`` needs, that
  ``action=watch`` takes its checkpoints from ``watch.dir`` (it is validated with none), which actions
  run under DeepSpeed;
* the names that must be in a registry (:func:`check_names`): the action, the searcher, the search
  space and its settings, the merge method and its settings, the compare methods and their settings.
  Registries answer from their declarations: no space, searcher or merge-method module is imported.

Both take the schema-checked :class:`~ckptmerge.config.Config` and raise a one-line
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from ckptmerge.errors import ConfigError
from ckptmerge.registry import did_you_mean

if TYPE_CHECKING:
    from ckptmerge.config import Config


def _needs_checkpoints(cfg: Config) -> None:
    """Every action but watch merges the checkpoints the model section names."""
    m = cfg.model
    if m.source != "embedded" and len(m.checkpoints) < 2:
        raise ConfigError(f"model.checkpoints needs at least 2 checkpoints to merge, got {len(m.checkpoints)}")


def _merge_rules(cfg: Config) -> None:
    if cfg.merge.weights is None and not cfg.merge.mergekit_config:
        raise ConfigError("action=merge needs merge.weights=[w1,...,wk] (or merge.mergekit_config=FILE)")
    if not cfg.merge.output_dir:
        raise ConfigError("action=merge needs merge.output_dir=DIR")


def _watch_rules(cfg: Config) -> None:
    if not cfg.watch.dir:
        raise ConfigError("action=watch needs watch.dir=DIR (the folder the trainer writes checkpoints into)")
    if cfg.model.source != "local":
        raise ConfigError(
            f"action=watch reads its checkpoints from watch.dir; use model=local, not model={cfg.model.name}"
        )
    if cfg.model.checkpoints:
        raise ConfigError("model.checkpoints is filled by action=watch from watch.dir; leave it out")


# action -> its rules; an action not listed needs only the checkpoints to merge
ACTION_RULES: dict[str, tuple[Callable[[Config], None], ...]] = {
    "merge": (_needs_checkpoints, _merge_rules),
    "watch": (_watch_rules,),
}


def check_action(cfg: Config) -> None:
    """The rules of ``cfg.action`` across sections."""
    for rule in ACTION_RULES.get(cfg.action, (_needs_checkpoints,)):
        rule(cfg)
    if cfg.action != "merge" and cfg.merge.mergekit_config:
        raise ConfigError(f"merge.mergekit_config is read by action=merge only, not action={cfg.action}")


def check_names(cfg: Config) -> None:
    """Every name that must be in a registry, and the settings of each entry named."""
    from ckptmerge.actions.registry import ACTIONS

    action = ACTIONS.get(cfg.action)  # an unknown action names the key, with a suggestion
    if cfg.runtime.backend == "deepspeed" and not action.deepspeed:
        supported = ", ".join(n for n in ACTIONS if ACTIONS.get(n).deepspeed)
        raise ConfigError(
            f"action={cfg.action} does not run under runtime=deepspeed (it supports "
            f"{supported}); use runtime=cpu or runtime=cuda"
        )
    if cfg.runtime.backend == "ray" and not action.ray:
        supported = ", ".join(n for n in ACTIONS if ACTIONS.get(n).ray)
        raise ConfigError(
            f"action={cfg.action} does not run under runtime=ray (it supports {supported}); "
            "use runtime=cpu or runtime=cuda"
        )
    _check_search(cfg)
    _check_merge(cfg)
    _check_compare(cfg)


def _check_search(cfg: Config) -> None:
    from ckptmerge.search import SEARCHERS, SPACES
    from ckptmerge.search.space_settings import make_space_settings, space_settings_of

    SEARCHERS.check(cfg.search.kind)
    space = cfg.search.space
    SPACES.check(space.name)
    make_space_settings(space_settings_of(space.name), space.name, space.settings)


def _check_merge(cfg: Config) -> None:
    from ckptmerge.merge.registry import METHODS, make_settings, settings_of

    METHODS.check(cfg.merge.method)
    beside = [f.name for f in dataclasses.fields(type(cfg.merge)) if f.name != "settings"]
    make_settings(settings_of(cfg.merge.method), cfg.merge.method, cfg.merge.settings, "merge", beside)


def compare_methods() -> tuple[str, ...]:
    """``action=compare``'s default methods: every registered baseline (``newest`` first), then our
    searches: ``bo`` (the pair), ``bo_<space>`` for every wider search space, and the other searchers."""
    from ckptmerge.merge import baseline_names
    from ckptmerge.search import SEARCHERS, SPACES

    spaces = [f"bo_{s}" for s in SPACES if s != "pair"]
    return (*baseline_names(), "bo", *spaces, *(k for k in SEARCHERS if k != "bo"))


def searched_method(method: str) -> tuple[str, str] | None:
    """``(searcher, space)`` for a compare method that searches: ``bo`` is the pair, ``bo_ema`` the EMA
    family, and so on for every registered searcher and space; None for a baseline or an unknown name."""
    from ckptmerge.search import SEARCHERS, SPACES

    kind, _, space = method.partition("_")
    if kind in SEARCHERS and (not space or space in SPACES):
        return kind, space or "pair"
    return None


def _check_compare(cfg: Config) -> None:
    from ckptmerge.merge.registry import METHODS, make_settings, settings_of

    c = cfg.compare
    for m in c.methods or ():
        if m not in METHODS and searched_method(m) is None:
            raise ConfigError(f"compare.methods: unknown method {m!r}{did_you_mean(m, compare_methods())}")
    for name, options in c.settings.items():
        if name not in METHODS:
            raise ConfigError(f"compare.settings.{name}: not a known merge method{did_you_mean(name, METHODS)}")
        make_settings(settings_of(name), name, options, f"compare.settings.{name}")
