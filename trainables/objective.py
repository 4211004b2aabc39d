"""What "better" means for an objective: the one place that knows a mode's direction.

A mode is ``max`` (more is better: SDR, an F-measure) or ``min`` (less is better: a loss, an
adapter's size). A missing or non-finite value is never better than anything, so a trial whose
epoch diverged cannot become anyone's best.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, TypeVar

MODES = ("max", "min")
T = TypeVar("T")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def better(value: Any, than: float | None, mode: str) -> bool:
    """``value`` strictly beats ``than`` (None: nothing to beat yet)."""
    if not finite(value):
        return False
    return than is None or (value > than if mode == "max" else value < than)


def best(items: Iterable[T], mode: str, key: Callable[[T], Any] | None = None) -> T | None:
    """The best item by ``key`` (the items themselves by default), among finite ones; None if none."""
    key = key or (lambda x: x)
    kept = [x for x in items if finite(key(x))]
    if not kept:
        return None
    return (max if mode == "max" else min)(kept, key=key)


def rank_key(value: Any, mode: str) -> tuple[bool, float]:
    """A sort key: best first, missing and non-finite values last."""
    if not finite(value):
        return True, 0.0
    return False, -value if mode == "max" else value
