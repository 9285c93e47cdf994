"""One small pattern for every extension point: a name → class (or function) table.

Searchers, search spaces, merge methods and actions each keep one :class:`Registry`; config
validation, ``action=compare`` and the docs read the registry instead of lists of names repeated in
several files. Adding one is a decorator in the module that defines it (from inside the package or
from a user's own module imported before the run)::

    @SPACES.register("cosine")
    class CosineSpace(SearchSpace): ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
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


class Registry(Generic[T]):
    """Named entries of one kind; an unknown name is a :class:`ConfigError` naming the config key."""

    def __init__(self, what: str, key: str) -> None:
        self.what = what  # "search space": for messages
        self.key = key  # "search.space": the config key that names an entry
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated class or function under ``name`` (twice is a programming error)."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[name] = entry
            if isinstance(entry, type):
                entry.name = name  # type: ignore[attr-defined]  # the name lives in one place: here
            return entry

        return add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test or a plugin that registered it for a while)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"{self.key}={name!r} is not a known {self.what}{did_you_mean(name, self._entries)}"
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
