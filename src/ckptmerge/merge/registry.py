"""Merge methods registered by name: what each needs, its settings, and where it can run.

A :class:`MergeMethod` declares

* ``needs``: ``"weights"`` (it reads the checkpoints' tensors and, at most, weights over them) or
  ``"calibration"`` (it also reads statistics of every checkpoint on calibration text);
* its form, exactly one of
    - ``fn(tensors, weights, out_dtype)``: pure math over the tensors of one parameter (``linear``). It
      runs in ``action=merge`` (the streaming writer), in a search's trials (``in_place``: the resident
      model is merged with the same function, so the merge a search evaluates is the merge it writes;
      ``linear`` has a faster in-place form, ``ResidentModel.apply``) and in ``action=compare`` with
      uniform weights over the compared checkpoints;
    - ``weighting(k, settings, evaluate)``: a rule giving weights over the ``k`` checkpoints (oldest
      first) that are then merged linearly: the soups (``newest``, ``uniform``, ``lawa``, ``ema``;
      ``greedy`` scores candidate weightings with ``evaluate``);
    - ``calibration``: a :class:`Calibration`, per-tensor math over the tensors and each checkpoint's
      statistic (``fisher``, ``regmean``);
* ``settings``: a frozen dataclass with defaults (``NoSettings`` when it has none); a method with
  settings has ``conf/merge/<name>.yaml`` holding the same defaults (``merge=<name>`` selects it);
* ``baseline``: listed by default among ``action=compare``'s methods.

Weighting rules and calibration methods produce their own weights, so a search (which searches the
weights) cannot run them in place and refuses them in one line, as it refuses any method registered
with ``in_place=False``. The built-in methods are declared in ``merge/__init__.py`` (name →
``module:object``, with their settings from :mod:`ckptmerge.merge.settings`); a method of your own is
one module calling :func:`register`, listed in the ``plugins`` config key, and, where it has settings,
one YAML. This module imports no torch: config validation reads the registry.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckptmerge.errors import ConfigError
from ckptmerge.merge.settings import NoSettings
from ckptmerge.registry import Registry, did_you_mean

if TYPE_CHECKING:
    import torch

MergeFn = Callable[..., "torch.Tensor"]  # fn(tensors, weights, out_dtype[, settings=...]) -> tensor
# weighting(k, settings, evaluate) -> weights over the k checkpoints; evaluate(weights) -> dev objective
WeightRule = Callable[[int, Any, Callable[[list[float]], float]], list[float]]
NEEDS = ("weights", "calibration")


@dataclass(frozen=True)
class Calibration:
    """A method that reads a statistic of each checkpoint on calibration text.

    ``statistic(model, tokenizer, texts, tokens, max_length)`` -> ``{key: tensor}`` for one checkpoint
    (its settings carry ``tokens``, how many calibration tokens it uses); ``merge(key, tensors,
    statistics, settings)`` -> the merged tensor of parameter ``key`` from the checkpoints' tensors and
    statistics, or None for a parameter the statistic does not cover (then averaged uniformly).
    """

    statistic: Callable[..., dict[str, torch.Tensor]]
    merge: Callable[[str, Sequence[torch.Tensor], Sequence[Mapping[str, torch.Tensor]], Any], torch.Tensor | None]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn | None = None
    needs: str = "weights"
    in_place: bool = True
    settings: type = NoSettings
    weighting: WeightRule | None = None
    calibration: Calibration | None = None
    baseline: bool = False
    summary: str = ""

    @property
    def form(self) -> str:
        """``per-tensor`` (a function of the tensors and weights), ``weighting`` or ``calibration``."""
        return "per-tensor" if self.fn is not None else "weighting" if self.weighting is not None else "calibration"

    @property
    def has_settings(self) -> bool:
        return bool(dataclasses.fields(self.settings))

    def make_settings(
        self, options: Mapping[str, Any] | None = None, prefix: str = "merge", beside: Sequence[str] = ()
    ) -> Any:
        """The settings dataclass from config keys over its defaults; unknown keys and bad values name the key
        (``beside``: the other keys under ``prefix``, for "did you mean")."""
        return make_settings(self.settings, self.name, options, prefix, beside)

    def bind(self, options: Mapping[str, Any] | None = None) -> MergeFn:
        """The per-tensor function with its settings: ``fn(tensors, weights, out_dtype)``."""
        if self.fn is None:
            per_tensor = ", ".join(n for n in METHODS if METHODS.get(n).fn is not None)
            raise ConfigError(
                f"merge.method={self.name} makes its own weights ({self.form} method): run it in action=compare; "
                f"action=merge and action=search take a function of tensors and weights ({per_tensor})"
            )
        if not self.has_settings:
            return self.fn
        bound = functools.partial(self.fn, settings=self.make_settings(options))
        for attr in ("elementwise",):  # what the streaming writer reads off the function
            if hasattr(self.fn, attr):
                setattr(bound, attr, getattr(self.fn, attr))
        return bound


def make_settings(
    settings: type, method_name: str, options: Mapping[str, Any] | None, prefix: str, beside: Sequence[str] = ()
) -> Any:
    """Settings class ``settings`` of merge method ``method_name`` from config keys over its defaults; unknown
    keys and bad values name the key. Reads no method module: validation calls it with a declared class."""
    from ckptmerge.schema import build

    fields = {f.name for f in dataclasses.fields(settings)}
    options = dict(options or {})
    for key in options:
        if key not in fields:
            known = fields | set(beside)
            raise ConfigError(
                f"unknown config key {prefix}.{key} for merge method {method_name}{did_you_mean(key, known)}"
            )
    if hasattr(settings, "__pydantic_fields__"):
        return build(settings, options, prefix)
    try:  # a plugin's plain dataclass
        return settings(**options)
    except (TypeError, ValueError) as e:
        message = str(e)
        named = any(message.startswith(f + " ") for f in fields)
        raise ConfigError(f"{prefix}.{message}" if named else f"{prefix} ({method_name}): {message}") from None


def settings_of(name: str) -> type:
    """The settings class of merge method ``name`` (a declared built-in's without importing its module)."""
    return METHODS.fact(name, "settings", NoSettings)


METHODS: Registry[MergeMethod] = Registry("merge method", "merge.method")


def register(
    name: str, fn: MergeFn | None = None, needs: str = "weights", in_place: bool = True, **form: Any
) -> MergeMethod:
    """Add a merge method under ``name`` from a user's module (a plugin; the built-ins are declared in
    ``merge/__init__.py``): :func:`merge_method`'s arguments (``settings``, ``weighting``,
    ``calibration``, ``baseline``, ``summary``), then the entry registered.

    ``register("pick", pick)`` adds a per-tensor function of the tensors and weights; a method with
    ``settings`` receives them as ``fn(tensors, weights, out_dtype, settings=...)``.
    """
    entry = merge_method(name, fn, needs, in_place, **form)
    METHODS.register(name)(entry)
    return entry


def merge_method(
    name: str,
    fn: MergeFn | None = None,
    needs: str = "weights",
    in_place: bool = True,
    *,
    settings: type = NoSettings,
    weighting: WeightRule | None = None,
    calibration: Calibration | None = None,
    baseline: bool = False,
    summary: str = "",
) -> MergeMethod:
    """A checked :class:`MergeMethod` (not registered: the built-ins' modules define theirs with it)."""
    forms = [f for f in (fn, weighting, calibration) if f is not None]
    if len(forms) != 1:
        raise ValueError(f"merge method {name!r}: give exactly one of fn, weighting, calibration")
    if needs not in NEEDS:
        raise ValueError(f"merge method {name!r}: needs must be one of {NEEDS}, got {needs!r}")
    if (needs == "calibration") != (calibration is not None):
        raise ValueError(f"merge method {name!r}: calibration statistics go with needs='calibration'")
    if not (dataclasses.is_dataclass(settings) and isinstance(settings, type)):
        raise ValueError(f"merge method {name!r}: settings must be a dataclass with defaults")
    settings()  # every setting has a default
    if calibration is not None and "tokens" not in {f.name for f in dataclasses.fields(settings)}:
        raise ValueError(f"merge method {name!r}: a calibration method's settings need `tokens`")
    entry = MergeMethod(
        name,
        fn,
        needs,
        in_place and fn is not None,  # a rule that makes its own weights has nothing to search
        settings,
        weighting,
        calibration,
        baseline,
        summary or _first_line(fn),
    )
    return entry


def _first_line(obj: Any) -> str:
    return ((getattr(obj, "__doc__", None) or "").strip().split("\n") or [""])[0]


def method(name: str) -> MergeMethod:
    return METHODS.get(name)


def get_method(name: str, settings: Mapping[str, Any] | None = None) -> MergeFn:
    """The per-tensor merge function called ``name`` with its settings, or a ConfigError naming ``merge.method``."""
    return METHODS.get(name).bind(settings)


def searchable(name: str) -> MergeMethod:
    """The method a search evaluates and writes with, refused when trials cannot run it in place."""
    m = METHODS.get(name)
    if m.in_place:
        return m
    others = ", ".join(in_place_names())
    if m.fn is not None:
        raise ConfigError(
            f"merge.method={name} has no in-place form, so a search cannot evaluate what it would write; "
            f"use action=merge for it, or a method with an in-place form ({others})"
        )
    raise ConfigError(
        f"merge.method={name} makes its own weights ({m.form} method), so a search has nothing to search; "
        f"run it in action=compare (compare.methods), or search with a method with an in-place form ({others})"
    )


def in_place_names() -> list[str]:
    return sorted(n for n in METHODS if METHODS.get(n).in_place)


def method_names() -> list[str]:
    return sorted(METHODS)


def baseline_names() -> list[str]:
    """``action=compare``'s default baselines, in registration order (``newest``, the reference, first)."""
    return [n for n in METHODS if METHODS.fact(n, "baseline", False)]
