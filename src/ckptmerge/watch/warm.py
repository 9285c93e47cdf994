"""Warm start across pairs (``watch.warm_start``): the search of pair (t−1, t) also evaluates the point
the search of pair (t−2, t−1) chose, early.

Adjacent pairs of one training run tend to want a similar λ, so the previous pair's result is a better
first guess than a corner of the box. The point is read back from MLflow (the previous pair's
``result.json``), so a restarted watcher proposes exactly the same initial points, and it is part of
the pair search's resume key, so a search resumed after a crash replays the same proposals.

Where the point goes was measured on the embedded trajectory (``benchmarks/watch_warm_start.py``,
docs/watch.md): see :data:`PLACE`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ckptmerge.search.searchers import Proposal
from ckptmerge.search.space import SearchSpace

Point = tuple[float, ...]

LABEL = "warm:previous-pair"  # the trial's proposed_by, on its child run and in result.json

# first: before the initial points; replace_first: instead of the first of the space's own initial
# points (λ=α for a pair, the far end of the box; a configured warm start's baselines are all kept,
# the point then goes first); last: after them. Measured on the embedded trajectory (docs/watch.md):
# first saved the most evaluations (to 99% of the dense best: 2.75 per pair against 2.5 and 1.75).
PLACES = ("first", "replace_first", "last")
PLACE = "first"


def previous_point(result: Mapping[str, Any], space: SearchSpace) -> Point | None:
    """The point a finished search chose (its ``result.json``), in ``space``'s coordinates; None when
    that search ran in another space or its point lies outside this box."""
    sp = result.get("space")
    if not isinstance(sp, Mapping) or sp.get("name") != space.name:
        return None
    coords = sp.get("point")
    if not isinstance(coords, Mapping) or set(coords) != set(space.coordinates):
        return None
    try:
        x = tuple(float(coords[c]) for c in space.coordinates)
    except (TypeError, ValueError):
        return None
    if any(not lo <= v <= hi for v, (lo, hi) in zip(x, space.bounds())):
        return None  # e.g. a search with another search.alpha
    return x


def with_previous(
    space: SearchSpace,
    initial: Sequence[Proposal] | None,
    previous: Point | None,
    min_distance: float,
    place: str = PLACE,
) -> list[Proposal] | None:
    """The initial proposals of a pair's search with the previous pair's point added (``initial``:
    the space's configured ones, None meaning the space's own ``initial()``).

    The point counts in the budget like every initial point. One within ``min_distance`` of an initial
    point is not added (that point is evaluated anyway, under its own label); ``replace_first`` then
    keeps the first point too. Without a point, ``initial`` is returned as given.
    """
    if previous is None:
        return list(initial) if initial is not None else None
    if place not in PLACES:
        raise ValueError(f"place must be one of {PLACES}, got {place!r}")
    base = list(initial) if initial else [Proposal(x, "initial") for x in space.initial()]
    x = tuple(float(v) for v in previous)
    space.check(x)
    if any(max(abs(a - b) for a, b in zip(x, p.x)) < min_distance for p in base):
        return base
    warm = Proposal(x, LABEL)
    if place == "first" or (place == "replace_first" and initial):
        return [warm, *base]
    if place == "last":
        return [*base, warm]
    return [warm, *base[1:]]


def initial_for(
    space: SearchSpace,
    configured: Sequence[Proposal] | None,
    previous_result: Mapping[str, Any] | None,
    min_distance: float,
) -> tuple[Point | None, list[Proposal] | None]:
    """A pair search's initial proposals given the previous pair's ``result.json`` (None: no warm start):
    the previous point (None when there is none to take) and the proposals (``configured`` as given
    when nothing is added)."""
    point = previous_point(previous_result, space) if previous_result is not None else None
    return point, with_previous(space, configured, point, min_distance)
