"""trainables/objective.py: the one place that knows which way an objective points."""

from __future__ import annotations

import math

import pytest

from trainables import objective


@pytest.mark.parametrize("mode, value, than, expected", [
    ("max", 2.0, 1.0, True), ("max", 1.0, 2.0, False), ("max", 1.0, 1.0, False),
    ("min", 1.0, 2.0, True), ("min", 2.0, 1.0, False), ("min", 1.0, 1.0, False),
    ("max", 1.0, None, True), ("min", -5.0, None, True),
    ("max", math.nan, None, False), ("min", math.inf, 3.0, False), ("max", None, 1.0, False),
])
def test_better_is_strict_and_never_for_a_missing_or_non_finite_value(mode, value, than, expected):
    assert objective.better(value, than, mode) is expected


def test_best_skips_non_finite_values_and_follows_the_mode():
    values = [3.0, math.nan, -1.0, math.inf, 2.0]
    assert objective.best(values, "max") == 3.0
    assert objective.best(values, "min") == -1.0
    assert objective.best([math.nan, None], "max") is None and objective.best([], "min") is None
    runs = [("a", 0.4), ("b", math.nan), ("c", 0.1)]
    assert objective.best(runs, "min", key=lambda r: r[1]) == ("c", 0.1)


@pytest.mark.parametrize("mode, order", [("max", [3.0, 2.0, -1.0, None, math.nan]),
                                         ("min", [-1.0, 2.0, 3.0, None, math.nan])])
def test_rank_key_sorts_best_first_and_missing_last(mode, order):
    values = [2.0, None, 3.0, math.nan, -1.0]
    ranked = sorted(values, key=lambda v: objective.rank_key(v, mode))
    assert ranked[:3] == order[:3] and all(v is None or math.isnan(v) for v in ranked[3:])
