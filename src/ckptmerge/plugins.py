"""``plugins``: the user's own modules, imported before the config is read, that register merge methods,
search spaces, searchers or actions.

A module that fails while it is imported (a missing module, an exception, a syntax error, a name that
is already registered, ``sys.exit`` at import) is one line naming the module and the error, exit 2,
before any work: ``error: plugins[0]: my_methods: ValueError: merge method 'linear' registered twice``.
"""

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
        except ModuleNotFoundError as e:
            if e.name is not None and (e.name == name or name.startswith(e.name + ".")):  # the plugin is not there
                raise ConfigError(f"plugins[{i}]: cannot import {name!r} ({e})") from None
            raise ConfigError(f"plugins[{i}]: {name}: {_one_line(e)}") from None
        except SystemExit as e:  # the module's own code ended the process: that is no way to load a plugin
            raise ConfigError(f"plugins[{i}]: {name}: called sys.exit({e.code!r}) while being imported") from None
        except Exception as e:  # noqa: BLE001 - whatever the module's code raised, as one line naming it
            raise ConfigError(f"plugins[{i}]: {name}: {_one_line(e)}") from None
    return tuple(modules)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
