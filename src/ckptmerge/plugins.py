"""The ``plugins`` config key: modules of the user's own imported before the config is checked, so
that the merge methods, search spaces, searchers or actions they register are known to validation."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from ckptmerge.errors import ConfigError

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_plugins(modules: Any) -> tuple[str, ...]:
    """Import each module of ``plugins`` (a module name, importable from the working directory or
    ``PYTHONPATH``): it registers its merge methods, search spaces, searchers or actions."""
    if not isinstance(modules, (list, tuple)):  # a bare name too: plugins=[my_methods] says it is a list
        raise ConfigError(f"plugins must be a list of module names such as [my_methods], got {modules!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # as `python -m`: a module beside the command is found
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"plugins[{i}] must be a module name such as my_methods, got {name!r}")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugins[{i}]: cannot import {name!r} ({e})") from None
    return tuple(modules)
