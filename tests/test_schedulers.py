"""Each ``search.scheduler.type`` stops the trials its implementation says it stops, on real Ray
Tune, Optuna and MLflow, with the platform's trial wrapper around ``benchmarks.scheduling``'s
synthetic training function (its objective is a smooth function of rank and lr that improves
with epochs; ~10 ms an epoch).

- hyperband (Ray's HyperBandScheduler) at 2 epochs and reduction factor 2 has two brackets of
  2 trials, filled in that order: the first stops nothing, the second halves at epoch 1,
  synchronously: its first trial to reach epoch 1 waits (paused) for the other, the better one
  goes on from its Tune checkpoint and the other stops. Each MLflow run has every epoch once.
- optuna (Optuna's SuccessiveHalvingPruner, ``bootstrap_count``): trials one at a time, so the
  first to reach epoch 1 has nothing to compare with and is stopped there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

METRIC = "valid/sdr"


def search(work: Path, overrides: list[str]) -> list[list]:
    """Each trial's MLflow metric history of the objective (in logging order), the trials in the
    order Tune created them."""
    from synthetic_search import synthetic_search
    from trainables import tags, tracking

    s = synthetic_search(work, overrides)
    mlflow = tracking.client(s.uri)
    runs = {run.data.tags[tags.TRIAL_ID]: run.info.run_id
            for run in mlflow.search_runs([s.exp_id], filter_string=f"tags.`{tags.PARENT}` = '{s.parent_id}'")}
    created = [result.metrics["trial_id"] for result in s.results]  # Tune's order: as the searcher made them
    assert sorted(created) == sorted(runs)
    return [sorted(mlflow.get_metric_history(runs[t], METRIC), key=lambda m: m.timestamp) for t in created]


def at(history: list, epoch: int) -> float:
    return next(m.value for m in history if m.step == epoch)


@pytest.mark.slow
def test_hyperband_halves_its_second_bracket_synchronously_and_resumes_the_kept_trial(tmp_path):
    histories = search(tmp_path, ["search.num_samples=4", "search.max_concurrent=2", "train.epochs=2",
                                  "search.scheduler.type=hyperband", "search.scheduler.reduction_factor=2"])
    for history in histories:  # a paused trial resumed where it stopped: every epoch once
        assert [m.step for m in history] == list(range(1, len(history) + 1))
    first, second = histories[:2], histories[2:]
    assert [len(h) for h in first] == [2, 2]  # the bracket that stops nothing
    assert sorted(len(h) for h in second) == [1, 2]
    kept, stopped = sorted(second, key=len, reverse=True)
    assert at(kept, 1) > at(stopped, 1)  # the better at the rung goes on
    assert kept[1].timestamp >= stopped[0].timestamp  # ... once both have reached it


@pytest.mark.slow
def test_optunas_pruner_stops_a_trial_that_reaches_a_rung_before_its_bootstrap_count(tmp_path):
    histories = search(tmp_path, ["search.num_samples=4", "search.max_concurrent=1", "train.epochs=2",
                                  "search.scheduler.type=optuna", "search.scheduler.grace_period=1",
                                  "search.scheduler.reduction_factor=2", "search.scheduler.bootstrap_count=1"])
    assert len(histories[0]) == 1  # alone at the rung: stopped
    # after it, a trial goes on only if it is in the top half at epoch 1 of the trials so far
    # (at least the best of them while fewer than 4: Optuna's rule)
    for i, history in enumerate(histories[1:], start=1):
        so_far = sorted((at(h, 1) for h in histories[:i + 1]), reverse=True)
        assert (len(history) == 2) == (at(history, 1) >= so_far[max(0, len(so_far) // 2 - 1)])
    assert any(len(h) == 2 for h in histories)  # the rule let some trial through
