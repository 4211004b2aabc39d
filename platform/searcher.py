"""The search's Optuna searcher: Ray Tune's ``OptunaSearch``, told what the trial keeps, with
the sampler's study in memory and a record of every finished trial in SQLite.

Tune's ``OptunaSearch`` tells Optuna a trial's *last* reported values. A trial's artifact is its
adapter at the epoch where the primary objective was best (``trainables.trial``), and the
summary, the Pareto front and promotion all judge that epoch. So this searcher remembers, per
trial, the report of the primary's best epoch and tells Optuna every objective's value from
that report: Optuna learns from the adapters the search actually produced, single- or
multi-objective alike. ASHA still sees every report as it comes.

The sampler works on an in-memory study. On SQLite every ask, sampled parameter, intermediate
value and tell is a commit, in the driver, between Tune's results: 100 trials of 12 parameters
and 3 reports took 6.1 s of driver time on SQLite, 0.4 s in memory and 2.7 s in memory with
the record below (``benchmarks/optuna_storage.py``, Optuna 5.0). Each
finished (or rejected) trial is copied to the ``record`` study in SQLite, one commit per
trial: that is the study the summary, the plots and ``optuna-dashboard`` read, and it never
holds a trial that is still running. ``--resume`` restores the in-memory study (and what this
searcher remembers) from Tune's saved searcher state (``OptunaSearch.save`` pickles
``__dict__``), which Tune writes together with its trial states, so the two always agree.
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
    def __init__(self, *args, record: str | None = None, **kwargs):
        """``record``: the storage URL (SQLite) of the study that keeps every finished trial,
        under the searcher's ``study_name``; the sampler's own study stays in memory."""
        if kwargs.get("storage") is not None:
            raise ValueError("BestEpochOptunaSearch keeps its study in memory; give the SQLite URL as record=")
        super().__init__(*args, **kwargs)
        self._best_reports: dict[str, dict] = {}
        self._record_url = record
        self._record: optuna.Study | None = None  # opened on the first finished trial
        self._recorded: set[str] | None = None  # Ray trial ids in the record; read once per driver

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
        ot_trial = self._ot_trials.get(trial_id)
        done = trial_id in self._completed_trials
        super().on_trial_complete(trial_id, best if best is not None and result is not None else result, error)
        if ot_trial is not None and not done:
            self.record(ot_trial, trial_id)

    def record(self, ot_trial: optuna.Trial, trial_id: str | None) -> None:
        """Copy a trial the in-memory study has finished into the SQLite record, once: a
        ``--resume``d search may finish again a trial that had finished after Tune last saved."""
        if self._record_url is None:
            return
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if frozen.state == optuna.trial.TrialState.RUNNING:  # the tell failed (Tune logged why)
            return
        if self._record is None:
            self._record = optuna.create_study(storage=self._record_url, study_name=self._study_name,
                                               directions=self._ot_study.directions, load_if_exists=True)
        if self._recorded is None:
            self._recorded = {t.user_attrs.get(TRIAL_ATTR) for t in self._record.get_trials(deepcopy=False)}
        if trial_id is not None and trial_id in self._recorded:
            return
        self._record.add_trial(optuna.trial.create_trial(
            state=frozen.state, values=frozen.values, params=frozen.params, distributions=frozen.distributions,
            user_attrs={**frozen.user_attrs, **({TRIAL_ATTR: trial_id} if trial_id else {})},
            system_attrs=frozen.system_attrs, intermediate_values=frozen.intermediate_values))
        if trial_id is not None:
            self._recorded.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        # the record's connection and id cache are the driver's, not state: a restored searcher opens them again
        record, recorded = self._record, self._recorded
        self._record = self._recorded = None
        try:
            super().save(checkpoint_path)
        finally:
            self._record, self._recorded = record, recorded


TRIAL_ATTR = "ray_trial_id"  # user attribute of a recorded trial: the Tune trial it was
