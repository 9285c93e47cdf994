"""The settings of the built-in search spaces (``conf/search/space/<name>.yaml`` beyond ``name``,
``last`` and ``warm_start``), declared without the spaces themselves so that config validation
checks them without importing numpy, scipy or the space modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ckptmerge.errors import ConfigError
from ckptmerge.registry import did_you_mean
from ckptmerge.schema import Number, build, key, section


@section()
class NoSettings:
    """A space without settings of its own."""


@section()
class EmaSpaceSettings:
    """``search/space=ema``: how far back the family may reach."""

    # β=1 would keep the oldest checkpoint alone: not an average any more
    beta_max: Number = key(0.95, "in (0, 1)", gt=0.0, lt=1.0)


COMMON_KEYS = ("name", "last", "warm_start")  # every space's YAML has these; the rest are its settings


def make_space_settings(settings: type, space: str, options: Mapping[str, Any], prefix: str = "search.space") -> Any:
    """Settings class ``settings`` of space ``space`` from its YAML's extra keys; unknown keys and bad values
    name the key (config validation calls it with a declared class, importing no space)."""
    fields = {f.name for f in dataclasses.fields(settings)}
    for name in options:
        if name not in fields:
            raise ConfigError(
                f"unknown config key {prefix}.{name} for search space {space}"
                f"{did_you_mean(name, fields | set(COMMON_KEYS))}"
            )
    if hasattr(settings, "__pydantic_fields__"):
        return build(settings, dict(options), prefix)
    try:  # a plugin's plain dataclass
        return settings(**dict(options))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix} ({space}): {e}") from None


def space_settings_of(name: str) -> type:
    """The settings class of search space ``name`` (a declared built-in's without importing its module)."""
    from ckptmerge.search import SPACES

    return SPACES.fact(name, "Settings", NoSettings) or NoSettings
