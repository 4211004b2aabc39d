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
holds a trial that is still running. The copy is made on a thread of its own (``_RecordWriter``):
Optuna's ORM spends ~25 ms a trial on it (a SELECT per parameter), which on Tune's event loop
held up every next trial (5.4 s of the 16.6 s the loop was busy in the 200-trial
``benchmarks/scheduling.py``).

``--resume`` restores the in-memory study (and what this searcher remembers) from Tune's saved
searcher state (``OptunaSearch.save`` pickles ``__dict__``), which Tune writes together with its
trial states. ``save`` first waits until the record holds every trial finished so far, so the
record holds at least what the saved state calls finished: a trial that finished after the last
save runs again after a resume and is recorded then (once: the record dedupes by Ray trial id).
"""

from __future__ import annotations

import copy
import queue
import threading
from typing import Callable

import optuna
from ray.tune.search.optuna import OptunaSearch

from trainables import objective

# the search's console is a line per trial event (platform/console.py): Optuna's INFO lines
# ("A new study created ...") are not among them; its warnings still are
optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    def __init__(self, *args, record: str | None = None, configs: Callable[[dict], dict] | None = None, **kwargs):
        """``record``: the storage URL (SQLite) of the study that keeps every finished trial,
        under the searcher's ``study_name``; the sampler's own study stays in memory.
        ``configs`` (``spaces.SampleToConfig``) nests a sample into the config sections it
        belongs in, which is what Tune and the trial get; None: the sampled values as Optuna
        names them (the sampler tested alone)."""
        if kwargs.get("storage") is not None:
            raise ValueError("BestEpochOptunaSearch keeps its study in memory; give the SQLite URL as record=")
        super().__init__(*args, **kwargs)
        self._configs = configs
        self._best_reports: dict[str, dict] = {}
        self._record_url = record
        self._writer: _RecordWriter | None = None  # started on the first finished trial

    @property
    def _primary(self) -> tuple[str, str]:
        metric, mode = self._metric, self._mode
        return (metric[0], mode[0]) if isinstance(metric, list) else (metric, mode)

    def suggest(self, trial_id: str):
        sampled = super().suggest(trial_id)
        return self._configs(sampled) if self._configs is not None and isinstance(sampled, dict) else sampled

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metric, mode = self._primary
        kept = self._best_reports.get(trial_id)
        if objective.better(result.get(metric), None if kept is None else kept[metric], mode):
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
        """Queue a trial the in-memory study has finished for the SQLite record."""
        if self._record_url is None:
            return
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if frozen.state == optuna.trial.TrialState.RUNNING:  # the tell failed (Tune logged why)
            return
        if self._writer is None:
            self._writer = _RecordWriter(self._record_url, self._study_name, self._ot_study.directions)
        # the in-memory storage hands out its own object, not a copy: the writer thread gets one
        self._writer.put(copy.deepcopy(frozen), trial_id)

    def flush(self) -> None:
        """Return once the record holds every trial queued so far (raises what writing it raised)."""
        if self._writer is not None:
            self._writer.flush()

    def save(self, checkpoint_path: str) -> None:
        # Tune's saved state must not call finished a trial the record lacks (see the module's doc)
        self.flush()
        # the writer (its thread and the record's connection) is the driver's, not state: a
        # restored searcher starts its own
        writer, self._writer = self._writer, None
        try:
            super().save(checkpoint_path)
        finally:
            self._writer = writer


class _RecordWriter:
    """Copies finished trials into the record study, in order, on a daemon thread. Only this
    thread touches the record's storage; ``flush`` waits for the queue to drain."""

    def __init__(self, url: str, study_name: str, directions: list):
        self._url, self._study_name, self._directions = url, study_name, directions
        self._queue: queue.Queue = queue.Queue()
        self._error: Exception | None = None
        threading.Thread(target=self._run, name="optuna-record", daemon=True).start()

    def put(self, frozen: optuna.trial.FrozenTrial, trial_id: str | None) -> None:
        self._queue.put((frozen, trial_id))

    def flush(self) -> None:
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        record, recorded = None, None
        while True:
            frozen, trial_id = self._queue.get()
            try:
                if record is None:
                    record = optuna.create_study(storage=self._url, study_name=self._study_name,
                                                 directions=self._directions, load_if_exists=True)
                    # Ray trial ids already recorded, read once: a --resume'd search may finish
                    # again a trial that had finished after Tune last saved
                    recorded = {t.user_attrs.get(TRIAL_ATTR) for t in record.get_trials(deepcopy=False)}
                if trial_id is None or trial_id not in recorded:
                    record.add_trial(optuna.trial.create_trial(
                        state=frozen.state, values=frozen.values, params=frozen.params,
                        distributions=frozen.distributions,
                        user_attrs={**frozen.user_attrs, **({TRIAL_ATTR: trial_id} if trial_id else {})},
                        system_attrs=frozen.system_attrs, intermediate_values=frozen.intermediate_values))
                    if trial_id is not None:
                        recorded.add(trial_id)
            except Exception as exc:  # raised to the driver by the next flush
                self._error = exc
            finally:
                self._queue.task_done()


TRIAL_ATTR = "ray_trial_id"  # user attribute of a recorded trial: the Tune trial it was
