"""Every trial's MLflow run ends with its final status, closed by the driver when the trial
could not close it itself.

A trial that trains all its epochs closes its own run (``trainables.trial``). One that Tune ends
first (stopped by the scheduler, or whose last report crossed Tune's stop) is torn down before
it can. The driver closes those as Tune ends them (``CloseEndedRuns``, a Tune callback whose
writes run on a thread of their own, so Tune's loop never waits for the store), and after
``Tuner.fit`` closes whatever is still open (``close_child_runs``): failed trials, the closings
the callback could not do, runs of trials a killed driver lost. Driver-only (control plane).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ray.tune import Callback

from platform import spaces
from trainables import objective as objectives
from trainables import tags, tracking


class CloseEndedRuns(Callback):
    """Closes a trial's run when Tune ends the trial, while the search goes on: the closing used
    to wait until ``Tuner.fit`` returned, a few store writes per stopped trial
    (benchmarks/scheduling.py). Tune saves its callbacks with the search's state: the thread
    is not saved, and a resumed search starts a new one."""

    def __init__(self, study: spaces.Study, uri: str, exp_id: str, parent_id: str):
        self.objective, self.epochs = study.config["objective"], study.config["train"]["epochs"]
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_pending": []}

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="rankhouse-close-runs")
        self._pending.append(self._pool.submit(self._close, trial.trial_id, dict(trial.last_result or {})))

    def on_experiment_end(self, trials, **info):
        # every closing done before Tuner.fit returns; one that failed is close_child_runs' to do
        for done in self._pending:
            with contextlib.suppress(Exception):
                done.result()
        if self._pool is not None:
            self._pool.shutdown()
        self._pool, self._pending = None, []

    def _close(self, trial_id: str, last: dict) -> None:
        mlflow = tracking.client(self.uri)
        still_open = mlflow.search_runs([self.exp_id], filter_string=(
            f"tags.`{tags.PARENT}` = '{self.parent_id}' and tags.`{tags.TRIAL_ID}` = '{trial_id}' "
            "and attributes.status = 'RUNNING'"), max_results=1)
        if still_open:  # a trial that trained every epoch has closed it itself
            close_run(mlflow, still_open[0].info.run_id, last, None, self.objective, self.epochs)


def close_run(mlflow, run_id: str, last: dict, error, objective: dict, epochs: int) -> None:
    """One run's final status, from what it logged and the trial's last report to Tune."""
    logged = len(land_last_report(mlflow, run_id, last, objective))
    if error is not None:
        mlflow.set_tag(run_id, tags.FAILURE, " ".join(str(error).split())[:4000])
        mlflow.set_terminated(run_id, status="FAILED")
    elif logged >= epochs:
        mlflow.set_terminated(run_id, status="FINISHED")
    else:
        mlflow.set_tag(run_id, tags.STOPPED_BY, "scheduler")
        mlflow.set_terminated(run_id, status="KILLED")


def close_child_runs(study: spaces.Study, results, uri: str, exp_id: str, parent_id: str) -> None:
    """Give every trial's run still open after ``Tuner.fit`` its final status."""
    mlflow = tracking.client(uri)
    tune_trials = {Path(r.path).name.removeprefix("trial_"): r for r in results}
    for run in tracking.children(mlflow, exp_id, parent_id, status="RUNNING"):
        result = tune_trials.get(run.data.tags.get(tags.TRIAL_ID))
        if result is None:
            # started just before a killed driver could save it in Tune's state: --resume does not
            # know it (it had no checkpoint) and samples a new trial in its place
            mlflow.set_tag(run.info.run_id, tags.LOST, "lost with a killed driver before Tune saved it; replaced")
            mlflow.set_terminated(run.info.run_id, status="KILLED")
            continue
        close_run(mlflow, run.info.run_id, result.metrics or {}, result.error, study.config["objective"],
                  study.config["train"]["epochs"])


def land_last_report(mlflow, run_id: str, last: dict, objective: dict) -> dict[int, float]:
    """The run's {epoch: objective}, with the trial's last report to Tune logged if it is missing.
    A trial writes an epoch's metrics asynchronously and waits for them before its next report
    (``trainables.trial``); one that Tune ended has had no next report, and its last write may
    still be in flight, or lost with its process. Tune has the result, so it is logged from there
    (should the trial's own write land after all, ``tracking.epochs`` counts the step once)."""
    metric, logged = objective["metric"], tracking.epochs(mlflow, run_id, objective["metric"])
    if "epoch" not in last or int(last["epoch"]) in logged:
        return logged
    epoch, value = int(last["epoch"]), last.get(metric)
    # the keys the trial logs (Tune adds its own: time, iteration, host), known from earlier epochs
    keys = set(mlflow.get_run(run_id).data.metrics) | {tracking.key(metric), "epoch"}
    better = objectives.better(value, objectives.best(logged.values(), objective["mode"]), objective["mode"])
    tracking.log_metrics(mlflow, run_id, {k: v for k, v in last.items() if tracking.key(k) in keys}, step=epoch,
                         run_tags={tags.BEST_EPOCH: epoch} if better else None)
    return {**logged, epoch: value}
