"""The schema's defaults as the nodes Hydra composes: the one place every default is written.

``conf/`` holds the presets (which model, which merge method, which search space) and what each one
changes; every other key and its default comes from the schema in :mod:`ckptmerge.config`,
registered by the Hydra app under the config group ``schema`` (``schema/search``, ``schema/merge``,
``schema/merge_settings/fisher``, ``schema/space_settings/ema``, ...) and pulled into each preset's defaults list::

    defaults:
      - /schema/search@_here_   # every search.* key with its default
      - space: pair
      - _self_
    kind: bo

``python src/main.py --cfg job`` prints the composed configuration with every default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ckptmerge.config import SECTIONS, Config, SpaceConfig, _plain
from ckptmerge.schema import fields_of

# Keys whose composed default depends on another key (Hydra interpolation), not a constant.
INTERPOLATED = {("registry", "name"): "ckptmerge-${model.name}"}
# Keys a section stores as free-form settings: the method's or space's own node supplies them.
SETTINGS = {"merge", "space"}


def _node(cls: type, section: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in fields_of(cls).items():
        if name == "settings" and section in SETTINGS:
            continue
        if name == "space" and section == "search":
            continue  # its own group, search/space
        default = info.get_default(call_default_factory=True)
        if dataclasses.is_dataclass(default):
            default = _node(type(default), name)
        out[name] = INTERPOLATED.get((section, name), _plain(default))
    return out


def defaults_tree() -> dict[str, dict[str, Any]]:
    """``{"schema/<name>": node}`` for the Hydra app to store: every section, the top level, and the
    settings of every declared merge method and search space that has any."""
    from ckptmerge.merge.registry import METHODS, settings_of
    from ckptmerge.search import SPACES
    from ckptmerge.search.space_settings import space_settings_of

    nodes: dict[str, dict[str, Any]] = {"root": {"action": Config.action, "plugins": []}}
    for name, cls in SECTIONS.items():
        nodes[name] = _node(cls, name)
    nodes["compare"]["methods"] = None  # null: every registered baseline, then our searches (at validation)
    # null, not {}: an override such as eval.metrics={task: acc} replaces it (Hydra would merge into {})
    nodes["eval"]["metrics"] = nodes["eval"]["weights"] = None
    # ???: a model preset must say which checkpoints (model=local's user, on the command line)
    nodes["model"]["checkpoints"] = "???"
    nodes["space"] = _node(SpaceConfig, "space")
    for method in METHODS:
        own = _node(settings_of(method), "settings")
        if own:
            nodes[f"merge_settings/{method}"] = own
    for space in SPACES:
        own = _node(space_settings_of(space), "settings")
        if own:
            nodes[f"space_settings/{space}"] = own
    return nodes
