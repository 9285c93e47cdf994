"""The one way a configuration section is declared: a frozen pydantic dataclass with strict types.

Every key states its type, its range and its choices once, next to its default::

    @section
    class WatchConfig:
        poll_s: float = key(30.0, "a number of seconds > 0", gt=0)
        promote: bool = False

Strict means what a careless command line needs: a boolean is only ``true`` or ``false`` (``no``,
``yes`` or ``1`` are refused, never read as "true because non-empty"), an integer is never a boolean
or a float, a number is never a string. The one leniency: a text field accepts an integer, because
YAML reads ``tracking.experiment=2024`` as one. A value that fails becomes a :class:`ConfigError`
of one line naming the full key, the expectation and the value given (:func:`build`).

Sections stay standard dataclasses (``dataclasses.replace``, ``fields`` and ``asdict`` work, and
``replace`` validates again). pydantic is imported here only: no torch, no searcher, no merge method.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ckptmerge.errors import ConfigError
from ckptmerge.registry import did_you_mean

C = TypeVar("C")

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


@typing.dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def section(prefix: str = "") -> Any:
    """Declare a class as a frozen, strictly typed configuration section (a pydantic dataclass) whose keys
    are ``prefix.KEY``: constructing it with a bad value raises a one-line :class:`ConfigError` naming that
    key. Without a prefix (a merge method's or a space's settings, whose keys depend on where they are
    set) it raises pydantic's error, which :func:`build` words with the prefix it is given."""

    def declare(cls: type[C]) -> type[C]:
        checked: Any = pydantic_dataclass(frozen=True, config=STRICT)(cls)
        if prefix:
            validate = checked.__init__

            @functools.wraps(validate)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                try:
                    validate(self, *args, **kwargs)
                except pydantic.ValidationError as e:
                    raise ConfigError(message(checked, e, prefix)) from None

            checked.__init__ = __init__
        checked.config_prefix = prefix
        return checked

    return declare


def key(
    default: Any = dataclasses.MISSING, expect: str = "", *, default_factory: Any = None, **constraints: Any
) -> Any:
    """A field with constraints (``ge``, ``gt``, ``le``, ``lt``) and the phrase its errors use: ``expect``
    completes "KEY must be ..." (e.g. "an integer >= 2 (λ=alpha and λ=1 come first)")."""
    extra: dict[str, Any] | None = {"expect": expect} if expect else None
    if default_factory is not None:
        return Field(default_factory=default_factory, json_schema_extra=extra, **constraints)
    return Field(default, json_schema_extra=extra, **constraints)


def _int_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# Text: a string; an integer is taken as its digits (YAML reads experiment=2024 as an int), a boolean never.
Text = Annotated[str, BeforeValidator(_int_as_text)]
# Number: an int or a float, kept as given (1000 stays 1000 in logged params and resume keys), never a
# boolean or a string.
Number = int | float


def build(cls: type[C], values: Mapping[str, Any], prefix: str) -> C:
    """``cls(**values)``, every failure a one-line :class:`ConfigError` naming ``prefix.KEY``."""
    try:
        return cls(**values)
    except pydantic.ValidationError as e:
        raise ConfigError(message(cls, e, prefix)) from None
    except TypeError as e:  # a positional/keyword mismatch pydantic leaves to Python
        raise ConfigError(f"{prefix}: {e}") from None


def message(cls: type, error: pydantic.ValidationError, prefix: str) -> str:
    """The first error of ``error`` as "KEY must be ..., got VALUE" (or a section rule's own sentence)."""
    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first.get("loc", ())]
    kind = first.get("type", "")
    if not loc:  # a rule over several keys (model_validator / __post_init__): its sentence names the keys
        return _rule_text(first)
    loc = [p for p in loc if not _union_member(p)]  # "m.int": which member of int | float refused it
    name = loc[0]
    full = ".".join([prefix, name, *_index_path(loc[1:])]).strip(".")
    full = full.replace(".[", "[")
    got = first.get("input")
    got = list(got) if isinstance(got, tuple) else got  # the command line's [a,b], not a tuple's (a, b)
    if kind == "unexpected_keyword_argument":
        known = [f.name for f in dataclasses.fields(cls)]
        return f"unknown config key {full}{did_you_mean(name, known)}"
    if kind == "missing_argument":
        return f"{full} must be set"
    annotation = _annotation(cls, name)
    choices = _choices(annotation)
    if choices and kind == "literal_error":
        return f"{full}={got!r} is not valid{did_you_mean(str(got), choices)}"
    if kind in ("value_error", "assertion_error"):
        return f"{full}: {_rule_text(first)}"
    expect = _expect(cls, name) if len(loc) == 1 else ""
    return f"{full} must be {expect or _phrase(kind, first)}, got {got!r}"


def _union_member(part: str) -> bool:
    return part in ("int", "float", "str", "bool") or "[" in part or "(" in part


def _index_path(rest: list[str]) -> list[str]:
    """pydantic's location below a key: list positions as ``[i]``, mapping keys as ``.name``."""
    out = []
    for part in rest:
        if part.isdigit():
            out.append(f"[{part}]")
        elif part in ("[key]",):
            continue
        else:
            out.append(part)
    return out


def _rule_text(err: Any) -> str:
    msg = str(err.get("msg", ""))
    for lead in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(lead)
    return msg


_PHRASES = {
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "tuple_type": "a list such as [a,b]",
    "list_type": "a list such as [a,b]",
    "dict_type": "a mapping such as {a: 1}",
    "mapping_type": "a mapping such as {a: 1}",
    "finite_number": "a finite number",
}


def _phrase(kind: str, err: Any) -> str:
    if kind in _PHRASES:
        return _PHRASES[kind]
    ctx = err.get("ctx") or {}
    for k, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if k in ctx:
            return f"{sign} {ctx[k]}"
    return _rule_text(err).lower()


def _field(cls: type, name: str) -> Any:
    fields = getattr(cls, "__pydantic_fields__", {})
    return fields.get(name)


def _expect(cls: type, name: str) -> str:
    info = _field(cls, name)
    extra = getattr(info, "json_schema_extra", None)
    return str(extra.get("expect", "")) if isinstance(extra, dict) else ""


def _annotation(cls: type, name: str) -> Any:
    info = _field(cls, name)
    return getattr(info, "annotation", None)


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` annotation (inside ``X | None`` too)."""
    if annotation is None:
        return ()
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in get_args(annotation):
            found = _choices(arg)
            if found:
                return found
    return ()


def fields_of(cls: type) -> dict[str, Any]:
    """``name -> FieldInfo`` of a section (for tests and docs that walk the schema)."""
    return dict(getattr(cls, "__pydantic_fields__", {}))
