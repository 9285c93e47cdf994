"""The facts about one merge that its model card, its MLflow description and its model version share.

Gathered once by the action that made the merge, so that the three places never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class MergeFacts:
    """What was merged, how, and what is known about the result (fields unknown yet stay empty)."""

    checkpoints: tuple[Mapping[str, Any], ...]  # oldest first: see checkpoint_entries
    weights: Mapping[str, float]  # checkpoint name -> weight
    method: str = "linear"
    out_dtype: str | None = None  # None: the checkpoints' own dtype
    in_dtype: str | None = None  # the checkpoints' floating dtype
    objective_definition: str | None = None  # e.g. "-1·task/bits_per_byte"
    objective: float | None = None  # oriented so that higher is better
    dev_metrics: Mapping[str, float] = field(default_factory=dict)  # TASK/METRIC -> raw value
    test_metrics: Mapping[str, float] = field(default_factory=dict)
    task_splits: Mapping[str, str] = field(default_factory=dict)  # TASK -> split evaluated
    gain: Mapping[str, Any] | None = None  # Gain.as_json() of the dev gain over the newest
    decision: str | None = None  # registered | keep-newest | not-registered
    decision_reason: str | None = None
    search: Mapping[str, Any] | None = None  # kind, budget, seed, alpha, trials
    mlflow: Mapping[str, str] | None = None  # tracking_uri (redacted), experiment_id, run_id
    registered: Mapping[str, str] | None = None  # name, version, alias
    plot_artifact: str | None = None  # the GP posterior plot on the parent run

    def with_(self, **changes: Any) -> MergeFacts:
        return replace(self, **changes)

    @property
    def newest(self) -> str:
        return self.checkpoints[-1]["name"]

    @property
    def lam(self) -> float | None:
        """The newest checkpoint's weight, for a pair."""
        return list(self.weights.values())[-1] if len(self.weights) == 2 else None

    def weights_text(self) -> str:
        return " + ".join(f"{w:.4f}·{n}" for n, w in self.weights.items())

    def gain_text(self) -> str | None:
        g = self.gain
        if not g:
            return None
        pct = f"{g.get('confidence', 0.95):.0%}"
        return (
            f"{g['value']:+.5f} ({pct} CI [{g['ci_low']:+.5f}, {g['ci_high']:+.5f}], p={g['p_value']:.3g}, "
            f"{'significant' if g['significant'] else 'not significant'})"
        )


def checkpoint_entries(cset: Any) -> tuple[dict[str, Any], ...]:
    """Each checkpoint of a :class:`CheckpointSet` as the card and mergekit name it: ``model`` is the hub
    ``repo@revision`` for a hub checkpoint, else its absolute folder (what mergekit reads offline)."""
    return tuple(
        {
            "name": c.name,
            "hub": c.ref.is_hub,
            "model": c.ref.text if c.ref.is_hub else str(c.folder),
            "folder": str(c.folder),
        }
        for c in cset.checkpoints
    )


def floating_dtype(cset: Any) -> str | None:
    """The newest checkpoint's floating dtype (``float16``...), the one its merge is written in by default."""
    for m in cset.newest.reader.meta().values():
        if m.dtype.is_floating_point:
            return str(m.dtype).replace("torch.", "")
    return None
