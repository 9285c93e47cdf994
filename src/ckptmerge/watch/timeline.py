"""The watch's timeline: what merging adds at each training step, and what that is worth in steps.

``steps_gained`` answers "merging here is worth ~N training steps". It is read off the trajectory's own
curve of objective (higher is better) versus training step, built from the checkpoints scored alone
(each pair's search evaluates λ=1, the newest alone, and with search.alpha=0 also λ=0, the older alone):

1. the points up to the pair's newest step are made monotone (isotonic regression, pool adjacent
   violators): noise may make a later checkpoint score a little lower, but training is taken to help;
2. the curve is linear between the points and is extended past the newest step with the slope of its
   last interval, for at most that interval's length (no further: the future is not known);
3. ``steps_gained`` = (the step at which the curve reaches the merged objective) - (the newest step).

A merge worse than the newest gives a negative number (it is worth going back that far). It is
undefined (None, with the reason) when the curve has fewer than two points, when its last interval
did not improve (a flat or falling curve cannot price a gain in steps), or when the objective lies
below the curve's first point or beyond the one-interval extrapolation. The gain's interval bounds are
priced the same way (``steps_gained.ci_low`` / ``.ci_high``), so the number comes with its uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckptmerge.tracking import names


def _is_number(v: object) -> bool:
    """A value a metric can hold: present and not NaN (a bootstrap with too few finite resamples gives NaN)."""
    return isinstance(v, (int, float)) and not math.isnan(v)


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out += [s / c] * int(c)
    return out


@dataclass(frozen=True)
class StepsGained:
    value: float | None
    reason: str | None = None  # why value is None


def steps_gained(curve: Sequence[tuple[int, float]], newest_step: int, objective: float) -> StepsGained:
    """How many training steps past ``newest_step`` the curve needs to reach ``objective``.

    ``curve``: (step, objective of that checkpoint alone), any order; points after ``newest_step``
    are not used (the timeline at a step knows only the past).
    """
    points = sorted((s, o) for s, o in curve if s <= newest_step)
    if len(points) < 2 or points[-1][0] != newest_step:
        return StepsGained(None, "fewer than two scored checkpoints up to this step")
    steps = [s for s, _ in points]
    ys = isotonic([o for _, o in points])
    (s0, y0), (s1, y1) = (steps[-2], ys[-2]), (steps[-1], ys[-1])
    if y1 <= y0:
        return StepsGained(None, "the objective did not improve over the last checkpoint interval")
    if objective > y1:  # past the newest: extrapolate one interval at most
        ahead = (objective - y1) / ((y1 - y0) / (s1 - s0))
        if ahead > s1 - s0:
            return StepsGained(None, f"more than one checkpoint interval ahead (> {s1 - s0} steps)")
        return StepsGained(ahead)
    if objective < ys[0]:
        return StepsGained(None, "below the first scored checkpoint")
    # the earliest step at which the monotone curve reaches the objective
    for (sa, ya), (sb, yb) in zip(zip(steps, ys), zip(steps[1:], ys[1:])):
        if ya <= objective <= yb:
            at = sa if yb == ya else sa + (objective - ya) / (yb - ya) * (sb - sa)
            return StepsGained(at - newest_step)
    return StepsGained(0.0)  # objective == the newest's (a single flat point)


def curve_points(pairs: Sequence[Any]) -> list[tuple[int, float]]:
    """(step, objective alone) of every checkpoint a done pair's search scored alone."""
    points: dict[int, float] = {}
    for p in pairs:
        older = p.older_objective()
        if older is not None:
            points.setdefault(p.steps[0], older)
        if p.newest_objective is not None:
            points[p.steps[1]] = float(p.newest_objective)
    return sorted(points.items())


def adjacent_pairs(pairs: Sequence[Any]) -> list[Any]:
    """Per newer step, the done pair with the highest older step: a pair searched before a lower step
    arrived (500→700, then 600 appeared) is superseded by the adjacent one (600→700)."""
    best: dict[int, Any] = {}
    for p in pairs:
        step = p.steps[1]
        if step not in best or p.steps[0] > best[step].steps[0]:
            best[step] = p
    return [best[s] for s in sorted(best)]


def timeline_rows(pairs: Sequence[Any]) -> list[dict]:
    """One row per newer step, from its adjacent done pair (a :class:`ckptmerge.watch.ledger.DonePair`;
    see :func:`adjacent_pairs`): what the watch run logs at that step and what its ``result.json`` lists."""
    curve = curve_points(pairs)
    rows = []
    for p in adjacent_pairs(pairs):
        r, step = p.result, p.steps[1]
        gain = r.get("gain") or None
        merged = r.get("objective")
        newest = p.newest_objective
        priced = steps_gained(curve, step, merged) if merged is not None else StepsGained(None, "no merged objective")
        bounds: dict[str, float | None] = {"ci_low": None, "ci_high": None}
        if gain and newest is not None:
            for b in bounds:
                v = gain.get(b)
                if _is_number(v):
                    bounds[b] = steps_gained(curve, step, newest + v).value
        rows.append(
            {
                "step": step,
                "checkpoints": list(p.names),
                "steps": list(p.steps),
                "search_run_id": p.run_id,
                "lambda": r.get("lambda"),
                "newest_objective": newest,
                "merged_objective": merged,
                "gain": gain,
                "steps_gained": priced.value,
                "steps_gained_ci": [bounds["ci_low"], bounds["ci_high"]],
                "steps_gained_undefined_because": priced.reason,
                "decision": r.get("decision"),
                "registered_model": r.get("registered_model"),
            }
        )
    return rows


def row_metrics(row: dict) -> dict[str, float]:
    """The watch run's metrics for one row (logged at the row's step); undefined values are left out."""
    steps = names.METRIC_STEPS_GAINED
    m: dict[str, float | None] = {
        names.METRIC_NEWEST_OBJECTIVE: row["newest_objective"],
        names.METRIC_MERGED_OBJECTIVE: row["merged_objective"],
        names.METRIC_WATCH_LAMBDA: row["lambda"],
        steps: row["steps_gained"],
        f"{steps}.ci_low": row["steps_gained_ci"][0],
        f"{steps}.ci_high": row["steps_gained_ci"][1],
    }
    gain, g = row["gain"] or {}, names.METRIC_WATCH_GAIN
    for k, name in (("value", g), ("ci_low", f"{g}.ci_low"), ("ci_high", f"{g}.ci_high"), ("p_value", f"{g}.p_value")):
        m[name] = gain.get(k)
    return {k: float(v) for k, v in m.items() if v is not None and _is_number(v)}


def plot_timeline(rows: Sequence[dict]) -> Any:
    """Gain (with its interval) and steps gained by training step, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps = [r["step"] for r in rows]
    gains = [(r["gain"] or {}).get("value") for r in rows]
    for r, g in zip(rows, gains):
        lo, hi = (r["gain"] or {}).get("ci_low"), (r["gain"] or {}).get("ci_high")
        if _is_number(g) and _is_number(lo) and _is_number(hi):
            ax1.plot([r["step"]] * 2, [lo, hi], color="tab:blue", alpha=0.5)
    ax1.plot(steps, [g if g is not None else float("nan") for g in gains], "o-", color="tab:blue")
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set_ylabel("gain over newest (objective)")
    ax2.plot(
        steps,
        [r["steps_gained"] if r["steps_gained"] is not None else float("nan") for r in rows],
        "s-",
        color="tab:green",
    )
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_ylabel("steps gained")
    ax2.set_xlabel("training step")
    fig.tight_layout()
    return fig
