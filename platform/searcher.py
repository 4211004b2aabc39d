"""The search's Optuna searcher: Ray Tune's ``OptunaSearch``, told what the trial keeps.

Tune's ``OptunaSearch`` tells Optuna a trial's *last* reported values. A trial's artifact is its
adapter at the epoch where the primary objective was best (``trainables.trial``), and the
summary, the Pareto front and promotion all judge that epoch. So this searcher remembers, per
trial, the report of the primary's best epoch and tells Optuna every objective's value from
that report: Optuna learns from the adapters the search actually produced, single- or
multi-objective alike. ASHA still sees every report as it comes.

What it remembers is pickled with the searcher (``OptunaSearch.save`` keeps ``__dict__``), so
a ``--resume``d search keeps it too.
"""

from __future__ import annotations

import math

import optuna
from ray.tune.search.optuna import OptunaSearch


def startup_trials(search: dict) -> int:
    """How many samples TPE draws at random before it models the results.

    Optuna's default is 10, which leaves a search of 8 samples all random and one of 12 with
    two TPE samples. A third of the samples (2 to 10) gives TPE most of a small search and
    Optuna's default to a large one.
    """
    n = search["startup_trials"]
    return n if n is not None else min(10, max(2, search["num_samples"] // 3))


def sampler(search: dict) -> optuna.samplers.BaseSampler:
    """The ``search`` section's Optuna sampler (several objectives: TPE is multi-objective)."""
    if search["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=search["seed"])
    return optuna.samplers.TPESampler(seed=search["seed"], multivariate=True, n_startup_trials=startup_trials(search))


class BestEpochOptunaSearch(OptunaSearch):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._best_reports: dict[str, dict] = {}

    @property
    def _primary(self) -> tuple[str, str]:
        metric, mode = self._metric, self._mode
        return (metric[0], mode[0]) if isinstance(metric, list) else (metric, mode)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metric, mode = self._primary
        value, kept = result.get(metric), self._best_reports.get(trial_id)
        if isinstance(value, (int, float)) and math.isfinite(value) and (
                kept is None or (value > kept[metric] if mode == "max" else value < kept[metric])):
            self._best_reports[trial_id] = dict(result)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        best = self._best_reports.pop(trial_id, None)
        super().on_trial_complete(trial_id, best if best is not None and result is not None else result, error)
