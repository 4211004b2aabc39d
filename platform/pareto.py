"""The Pareto front of a multi-objective search: the trials no other trial beats on every objective."""

from __future__ import annotations

from typing import Hashable, Sequence

from trainables import objective


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    pairs = list(zip(a, b, modes))
    return any(objective.better(x, y, m) for x, y, m in pairs) and not any(objective.better(y, x, m) for x, y, m in pairs)


def front(points: dict[Hashable, Sequence[float]], modes: Sequence[str]) -> list[Hashable]:
    """The keys of the non-dominated points (every value finite), best primary objective first.
    Two trials with equal values are both on the front."""
    finite = {k: v for k, v in points.items() if len(v) == len(modes) and all(objective.finite(x) for x in v)}
    kept = [k for k, v in finite.items() if not any(dominates(w, v, modes) for w in finite.values())]
    return sorted(kept, key=lambda k: tuple(objective.rank_key(x, m) for x, m in zip(finite[k], modes)))
