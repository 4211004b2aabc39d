"""What a search prints while it runs: one line per trial event, with the objective.

Tune's own console (``--verbose``) prints a status table every 30 s, without the objective
unless asked, and the best trial's whole configuration each time. The default here is a line
when a trial starts (its sampled parameters, once), one per epoch (the objective, its best so
far, the study's best), and one when it ends. ``--quiet`` prints none of them: only the
closing table.
"""

from __future__ import annotations

import time

from ray.tune import Callback

from platform import spaces
from platform.summary import describe, number
from trainables import objective


def tune_verbosity(level: str) -> int:
    """Ray Tune's ``RunConfig.verbose`` for a console level: Tune speaks only when asked to."""
    return 1 if level == "verbose" else 0


class TrialLines(Callback):
    """The default console: trial events as single lines."""

    def __init__(self, study: spaces.Study, metric: str, mode: str):
        self.params, self.metric, self.mode = study.params, metric, mode
        self.epochs = study.config["train"]["epochs"]
        self.best: dict[str, float] = {}
        self.started = time.monotonic()

    def _stamp(self) -> str:
        return f"[{(time.monotonic() - self.started) / 60:5.1f} min]"

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"{self._stamp()} trial {trial.trial_id} started: "
              f"{describe(spaces.sampled_values(self.params, trial.config))}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None:
            return
        tid = trial.trial_id
        if objective.better(value, self.best.get(tid), self.mode):
            self.best[tid] = value
        trial_best, study_best = self.best.get(tid), objective.best(self.best.values(), self.mode)
        print(f"{self._stamp()} trial {tid} epoch {result.get('epoch', '?')}/{self.epochs}: {self.metric} "
              f"{value:.3f} (trial best {number(trial_best)}, study best {number(study_best)})", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        best = self.best.get(trial.trial_id)
        epochs = (trial.last_result or {}).get("epoch", 0)
        ended = "finished" if epochs >= self.epochs else f"stopped by the scheduler after epoch {epochs}"
        print(f"{self._stamp()} trial {trial.trial_id} {ended}: best {self.metric} {number(best)}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{self._stamp()} trial {trial.trial_id} failed (its run's rankhouse.failure tag says why)", flush=True)
