"""One small pattern for every extension point: a name → class (or function) table.

Searchers, search spaces, merge methods and actions each keep one :class:`Registry`; config
validation, ``action=compare`` and the docs read the registry instead of lists of names repeated in
several files.

The built-in entries are *declared* by their package's ``__init__.py`` as a name → ``module:object``
table (:meth:`Registry.declare`), with the facts config validation needs (a settings class, whether a
method is a baseline): the module is imported only when the entry is used, so checking a config never
loads torch, skopt or lm-eval, and no registration depends on which module happened to be imported
first. A user's own module, imported before the run (``plugins=[...]``), adds entries with the
decorator::

    @SPACES.register("cosine")
    class CosineSpace(SearchSpace): ...
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ckptmerge.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, options: Any) -> str:
    """`` (did you mean 'x'?)`` when a close option exists, else a list of the options."""
    options = sorted(str(o) for o in options)
    close = difflib.get_close_matches(str(name), options, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    shown = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
    return f" (choose from: {shown})"


@dataclass(frozen=True)
class Declared:
    """A built-in entry not imported yet: where it lives and what validation may know without importing it."""

    target: str  # "package.module:object"
    facts: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Named entries of one kind; an unknown name is a :class:`ConfigError` naming the config key."""

    def __init__(self, what: str, key: str) -> None:
        self.what = what  # "search space": for messages
        self.key = key  # "search.space": the config key that names an entry
        self._entries: dict[str, T | Declared] = {}

    def declare(self, name: str, target: str, **facts: Any) -> None:
        """A built-in entry: ``target`` (``module:object``) is imported on first :meth:`get`; ``facts`` (such as
        ``settings=SomeSettings``) answer :meth:`fact` without importing it."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = Declared(target, facts)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated class or function under ``name`` (twice is an error: a plugin that
        reuses a built-in name is refused, never silently replaces it)."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[name] = _named(entry, name)
            return entry

        return add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test or a plugin that registered it for a while)."""
        self._entries.pop(name, None)

    def check(self, name: str) -> None:
        """A :class:`ConfigError` naming the config key when ``name`` is not registered (imports nothing)."""
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(f"{self.key}={name!r} is not a known {self.what}{did_you_mean(name, self._entries)}")

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"{self.key}={name!r} is not a known {self.what}{did_you_mean(name, self._entries)}"
            ) from None
        if isinstance(entry, Declared):
            entry = self._entries[name] = _named(entry.load(), name)
        return entry

    def fact(self, name: str, key: str, default: Any = None) -> Any:
        """What the entry declares about itself (``settings``, ``baseline``), without importing a declared
        built-in; for an entry already loaded or registered directly, its attribute of that name."""
        self.check(name)
        entry = self._entries[name]
        if isinstance(entry, Declared):
            return entry.facts.get(key, default)
        return getattr(entry, key, default)

    def loaded(self, name: str) -> bool:
        """Whether ``name``'s module has been imported (tests check that validation imports none)."""
        return name in self._entries and not isinstance(self._entries[name], Declared)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


def _named(entry: Any, name: str) -> Any:
    """A class entry carries its registered name (the name lives in one place: the registry)."""
    if isinstance(entry, type):
        entry.name = name  # type: ignore[attr-defined]
    return entry
