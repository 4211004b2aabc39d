"""The search's early stopping: ``search.scheduler`` as a Ray Tune scheduler.

Every kind is a maintained implementation, configured here, not a scheduler of rankhouse's:

  asha       Ray's ASHAScheduler: asynchronous successive halving. A trial passes a rung when it
             beats the top 1/reduction_factor of the results already recorded there, so the
             first trials to reach a rung pass with little to compare against.
  hyperband  Ray's HyperBandScheduler: synchronous successive halving in HyperBand's brackets,
             filled in Ray's order (the bracket that stops nothing first, then ever more
             aggressive ones; a bracket whose first rung would fall before epoch 1 is skipped).
             A trial that reaches its bracket's rung is paused (its Tune checkpoint kept) until
             every trial of the bracket has, then the best 1/reduction_factor resume from their
             checkpoints and the rest stop.
  optuna     Optuna's SuccessiveHalvingPruner decides and Tune stops (``OptunaPruning``):
             asynchronous like ASHA, with its ``bootstrap_count``: a trial that reaches a rung
             before that many others have reported there is stopped, so later trials are
             compared with more results at each rung.
  fifo       no early stopping.

benchmarks/search_efficiency.py measures them against each other (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, TrialScheduler

TIME_ATTR = "training_iteration"  # one per reported epoch


def build(scheduler: dict, epochs: int) -> TrialScheduler:
    """The ``search.scheduler`` section (validated) as Tune's scheduler; Tune gives it the
    objective's metric and mode (``set_search_properties``)."""
    kind, rf = scheduler["type"], scheduler["reduction_factor"]
    if kind == "asha":
        return ASHAScheduler(time_attr=TIME_ATTR, max_t=epochs, grace_period=scheduler["grace_period"],
                             reduction_factor=rf)
    if kind == "hyperband":
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=epochs, reduction_factor=rf)
    if kind == "optuna":
        return OptunaPruning(optuna.pruners.SuccessiveHalvingPruner(
            min_resource=scheduler["grace_period"], reduction_factor=rf,
            bootstrap_count=scheduler["bootstrap_count"]))
    return FIFOScheduler()


def pauses_trials(scheduler: dict) -> bool:
    """A synchronous scheduler holds paused trials, which still count against Tune's
    ConcurrencyLimiter: limited to the trials that fit side by side, no bracket would ever fill
    beyond them (and none would be halved). Its concurrency is bounded by the resources alone."""
    return scheduler["type"] == "hyperband"


class OptunaPruning(FIFOScheduler):
    """An Optuna pruner as Tune's scheduler: each Tune trial is a trial of a study of the
    scheduler's own (in memory: intermediate values only, no parameters), its reports are
    Optuna's intermediate values at step ``training_iteration``, and the pruner's
    ``should_prune`` stops it. The sampler's study (platform/searcher.py) is not used: Tune
    calls the scheduler before the searcher sees a result."""

    def __init__(self, pruner: optuna.pruners.BasePruner):
        super().__init__()
        self._pruner = pruner
        self._metric: str | None = None
        self._mode: str | None = None
        self._study: optuna.Study | None = None
        self._trials: dict[str, optuna.Trial] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if self._metric is not None and metric is not None:
            return False  # Tune's own rule: set once
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def _study_of_trials(self) -> optuna.Study:
        if self._study is None:
            direction = "maximize" if self._mode == "max" else "minimize"
            self._study = optuna.create_study(direction=direction, pruner=self._pruner,
                                              sampler=optuna.samplers.RandomSampler(seed=0))
        return self._study

    def on_trial_add(self, tune_controller, trial) -> None:
        self._trials[trial.trial_id] = self._study_of_trials().ask()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        value, step = result.get(self._metric), result.get(TIME_ATTR)
        ot_trial = self._trials.get(trial.trial_id)
        if ot_trial is None or value is None or step is None:
            return TrialScheduler.CONTINUE
        ot_trial.report(float(value), int(step))
        if ot_trial.should_prune():
            self._finish(trial, optuna.trial.TrialState.PRUNED)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        value = (result or {}).get(self._metric)
        if value is None or not math.isfinite(float(value)):
            self._finish(trial, optuna.trial.TrialState.FAIL)
        else:
            self._finish(trial, optuna.trial.TrialState.COMPLETE, float(value))

    def on_trial_error(self, tune_controller, trial) -> None:
        self._finish(trial, optuna.trial.TrialState.FAIL)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._finish(trial, optuna.trial.TrialState.FAIL)

    def _finish(self, trial, state, value: float | None = None) -> None:
        ot_trial = self._trials.pop(trial.trial_id, None)
        if ot_trial is not None:
            self._study_of_trials().tell(ot_trial, value, state=state)

    def debug_string(self) -> str:
        return f"Using Optuna's {type(self._pruner).__name__}: {len(self._trials)} trials running."
