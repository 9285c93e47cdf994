"""The search space: points ``u`` in a box, mapped to merge weights on the simplex.

For k checkpoints (oldest … newest) a point has k−1 coordinates, read as **stick-breaking** from the
newest checkpoint backwards:

    w_newest = u₁                      u₁ ∈ [α, 1]
    w_{k-1}  = (1 − u₁)·u₂             u₂ ∈ [0, 1]
    ...
    w_oldest = (1 − u₁)···(1 − u_{k−1})

Every point gives non-negative weights summing to 1, every weighting with ``w_newest ≥ α`` has a
point, and for a pair (k=2) the single coordinate *is* λ, the weight of the newest checkpoint, so
``λ ∈ [α, 1]`` exactly as in the paper. The newest checkpoint comes first because it is the one the
paper keeps a floor α on; a GP over these coordinates sees the most important one as ``u₁``.

Initial points: ``u₁ = α`` with the remaining mass shared equally by the older checkpoints, and the
newest checkpoint alone (``u₁ = 1``): for a pair, λ=α and λ=1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class WeightSpace:
    """Stick-breaking map from the box to weights over ``k`` checkpoints, oldest first."""

    k: int
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError("a weight space needs at least 2 checkpoints")

    @property
    def dims(self) -> int:
        return self.k - 1

    @property
    def is_pair(self) -> bool:
        return self.k == 2

    def bounds(self) -> list[tuple[float, float]]:
        return [(self.alpha, 1.0)] + [(0.0, 1.0)] * (self.k - 2)

    def weights(self, u: Sequence[float]) -> list[float]:
        """Weights for the checkpoints, oldest first, from a point of the box."""
        if len(u) != self.dims:
            raise ValueError(f"point has {len(u)} coordinates, space has {self.dims}")
        newest_first = []
        rest = 1.0
        for x in u:
            newest_first.append(rest * float(x))
            rest *= 1.0 - float(x)
        newest_first.append(rest)
        return list(reversed(newest_first))

    def initial(self) -> list[tuple[float, ...]]:
        """``u₁ = α`` with the rest shared equally by the older checkpoints, then the newest alone."""
        shared = tuple([self.alpha] + [1.0 / (self.k - j) for j in range(1, self.k - 1)])
        alone = tuple([1.0] + [0.5] * (self.k - 2))
        return [shared, alone]
