"""A trial's epochs reach MLflow although their writes run off the epoch's critical path.

``trainables.trial._run_loop`` hands each epoch's metrics to a writer thread (``tracking.log_metrics``).
These tests drive it directly, without a Ray cluster, over a real SQLite MLflow store and Ray's
real ``Checkpoint``: a trial killed with its last write in flight (the window no SIGKILL test can
hit on purpose) is resumed from that epoch's checkpoint, and a finished trial's every epoch is in
the store when the trial returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

METRIC = "valid/sdr"


def epoch_folder(folder: Path, epoch: int, value: float) -> dict:
    """A checkpoint folder as the loop writes one: the adapter and STATE with the epoch's metrics."""
    from safetensors.numpy import save_file

    from trainables import checkpoint

    metrics = {"epoch": epoch, METRIC: value, "train/loss": 1.0 / epoch}
    (folder / checkpoint.ADAPTER).mkdir(parents=True)
    save_file({"lora_A": np.full((2, 4), float(epoch), np.float32)},
              str(folder / checkpoint.ADAPTER / "adapter_model.safetensors"))
    (folder / checkpoint.STATE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
    return metrics


def training_function(last_epoch: int, values: dict[int, float]):
    """``loop.train``'s signature: reports the epochs after the one it resumes from."""

    def train(cfg, report, resume_from=None, device=None, prepare_model=None, on_setup=None, rank=0):
        start = json.loads((resume_from / "state.json").read_text())["epoch"] if resume_from else 0
        for epoch in range(start + 1, last_epoch + 1):
            folder = Path(cfg["scratch"]) / f"epoch{epoch}"
            report(epoch_folder(folder, epoch, values[epoch]), folder)

    return train


@pytest.fixture
def run(tmp_path):
    from trainables import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = tracking.client(uri)
    # The artifact root beside the store: MLflow's default is ./mlruns in the working directory.
    experiment = mlflow.create_experiment("trial-logging", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = mlflow.create_run(experiment).info.run_id
    return mlflow, uri, run_id


def run_loop(uri: str, run_id: str, train, scratch: Path, resume=None, new_run: bool = False) -> list[dict]:
    import ray.tune

    from trainables import trial

    reported = []
    cfg = {"objective": {"metric": METRIC, "mode": "max"}, "scratch": str(scratch)}
    trial._run_loop({"cfg": cfg, "uri": uri, "run_id": run_id, "train_fn": train, "new_run": new_run},
                    lambda metrics, checkpoint: reported.append(metrics), resume, ray.tune.Checkpoint, 0, None)
    return reported


def steps(mlflow, run_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(mlflow.get_metric_history(run_id, METRIC), key=lambda m: m.timestamp)]


def test_a_finished_trial_has_every_epoch_in_the_store_when_it_returns(run, tmp_path):
    mlflow, uri, run_id = run
    values = {1: 1.0, 2: 3.0, 3: 2.0}
    reported = run_loop(uri, run_id, training_function(3, values), tmp_path, new_run=True)
    assert [r["epoch"] for r in reported] == [1, 2, 3]
    assert steps(mlflow, run_id) == [(1, 1.0), (2, 3.0), (3, 2.0)]
    tags = mlflow.get_run(run_id).data.tags
    assert tags["rankhouse.best_epoch"] == "2"  # the best epoch's tag rode with its metrics
    logged = mlflow.download_artifacts(run_id, "adapter/adapter_model.safetensors", str(tmp_path / "got"))
    from safetensors.numpy import load_file

    assert load_file(logged)["lora_A"][0, 0] == 2.0  # the best epoch's adapter, not the last


@pytest.mark.parametrize("landed", [False, True], ids=["write-lost", "write-landed"])
def test_a_resumed_trial_logs_its_checkpoint_epoch_once_whether_or_not_its_write_landed(run, tmp_path, landed):
    """Epoch 1 is in the store; the trial died after Tune registered epoch 2's checkpoint, with
    epoch 2's write in flight (lost) or done (landed). The retry resumes from epoch 2."""
    from trainables import tracking

    mlflow, uri, run_id = run
    values = {1: 1.0, 2: 5.0, 3: 4.0}
    tracking.log_metrics(mlflow, run_id, {"epoch": 1, METRIC: values[1]}, step=1,
                         run_tags={"rankhouse.best_epoch": 1})
    killed_at = tmp_path / "checkpoint"
    epoch2 = epoch_folder(killed_at, 2, values[2])
    if landed:
        tracking.log_metrics(mlflow, run_id, epoch2, step=2, run_tags={"rankhouse.best_epoch": 2})
    import ray.tune

    reported = run_loop(uri, run_id, training_function(3, values), tmp_path / "retry",
                        resume=ray.tune.Checkpoint.from_directory(str(killed_at)))
    assert [r["epoch"] for r in reported] == [3]  # Tune hears of epoch 3 only: it has epoch 2's result
    assert steps(mlflow, run_id) == [(1, 1.0), (2, 5.0), (3, 4.0)]  # every epoch, once, in order
    tags = mlflow.get_run(run_id).data.tags
    assert tags["rankhouse.best_epoch"] == "2"
    assert tags["rankhouse.resumed_from_epoch"] == "2" and tags["rankhouse.restarts"] == "1"


@pytest.mark.parametrize("landed", [False, True], ids=["write-lost", "write-landed"])
def test_the_driver_logs_a_stopped_trials_last_report_if_its_write_never_landed(run, landed):
    """Tune ended the trial after its epoch-2 report (a scheduler's stop): no next report waited
    for that write. The driver logs Tune's copy of it, without Tune's own keys, once."""
    from platform.tune import land_last_report
    from trainables import tracking

    mlflow, _, run_id = run
    tracking.log_metrics(mlflow, run_id, {"epoch": 1, METRIC: 1.0, "train/loss": 1.0}, step=1)
    last = {"epoch": 2, METRIC: 3.0, "train/loss": 0.5, "training_iteration": 2, "time_total_s": 4.2,
            "hostname": "node", "done": False}
    if landed:
        tracking.log_metrics(mlflow, run_id, {k: last[k] for k in ("epoch", METRIC, "train/loss")}, step=2,
                             run_tags={"rankhouse.best_epoch": 2})
    logged = land_last_report(mlflow, run_id, last, {"metric": METRIC, "mode": "max"})
    assert logged == {1: 1.0, 2: 3.0}
    assert steps(mlflow, run_id) == [(1, 1.0), (2, 3.0)]
    data = mlflow.get_run(run_id).data
    assert set(data.metrics) == {"epoch", METRIC, "train/loss"}  # none of Tune's keys
    assert data.metrics["train/loss"] == 0.5 and data.tags["rankhouse.best_epoch"] == "2"


@pytest.mark.parametrize(("ended_at", "status"), [(2, "KILLED"), (3, "FINISHED")], ids=["stopped", "last-epoch"])
def test_a_trial_that_tune_ends_at_a_report_closes_its_run_with_its_epochs_in_the_store(run, tmp_path, ended_at,
                                                                                        status):
    """Ray's ``report`` exits the trial's thread (SystemExit) when Tune ends the trial: early, by
    the scheduler, or at its last epoch. The trial closes its own run before it exits."""
    import ray.tune

    from trainables import trial

    mlflow, uri, run_id = run
    values = {1: 1.0, 2: 3.0, 3: 2.0}

    def ray_report(metrics, checkpoint):
        if metrics["epoch"] == ended_at:
            raise SystemExit(0)

    cfg = {"objective": {"metric": METRIC, "mode": "max"}, "scratch": str(tmp_path), "train": {"epochs": 3}}
    with pytest.raises(SystemExit):
        trial._run_loop({"cfg": cfg, "uri": uri, "run_id": run_id, "train_fn": training_function(3, values),
                         "new_run": True, "close_when_ended": True}, ray_report, None, ray.tune.Checkpoint, 0, None)
    got = mlflow.get_run(run_id)
    assert got.info.status == status
    assert got.data.tags.get("rankhouse.stopped_by") == ("scheduler" if status == "KILLED" else None)
    assert steps(mlflow, run_id) == [(e, values[e]) for e in range(1, ended_at + 1)]  # the last write landed first


def test_a_trial_run_closed_when_tune_ended_it_is_reopened_without_the_stop_tag(run):
    """A trial Tune ended can go on: a search resumed after its driver was interrupted."""
    from trainables import tracking

    mlflow, _, _ = run
    experiment = mlflow.get_experiment_by_name("trial-logging").experiment_id
    run_id, found = tracking.child_run(mlflow, experiment, "parent", "study", "t1", "t1")
    tracking.end_run(mlflow, run_id, complete=False)
    again, found = tracking.child_run(mlflow, experiment, "parent", "study", "t1", "t1")
    assert (again, found) == (run_id, "KILLED")
    got = mlflow.get_run(run_id)
    assert got.info.status == "RUNNING" and "rankhouse.stopped_by" not in got.data.tags


def test_a_store_that_refuses_the_close_leaves_tunes_stop_a_stop(run, tmp_path):
    """The run cannot be closed (deleted meanwhile): the trial still exits as Tune asked, not with
    the store's error, which Tune would count as the trial's failure."""
    import ray.tune

    from trainables import trial

    mlflow, uri, run_id = run

    def ray_report(metrics, checkpoint):
        mlflow.delete_run(run_id)  # the store now refuses every write to the run
        raise SystemExit(0)

    cfg = {"objective": {"metric": METRIC, "mode": "max"}, "scratch": str(tmp_path), "train": {"epochs": 3}}
    with pytest.raises(SystemExit):
        trial._run_loop({"cfg": cfg, "uri": uri, "run_id": run_id, "train_fn": training_function(3, {1: 1.0}),
                         "new_run": True, "close_when_ended": True}, ray_report, None, ray.tune.Checkpoint, 0, None)
    assert mlflow.get_run(run_id).info.status == "RUNNING"  # left for the driver


def test_a_failed_trials_run_is_failed_with_its_error_on_one_line_cut_to_fit_the_store(run, monkeypatch):
    """A traceback-long error still closes the run where MLflow refuses tag values over 8,000 characters."""
    from trainables import tracking

    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")
    mlflow, _, run_id = run
    error = RuntimeError("loss is non-finite at epoch 3\n" + "  File 'loop.py', line 1, in step\n" * 400)
    tracking.fail_run(mlflow, run_id, error)
    got = mlflow.get_run(run_id)
    assert got.info.status == "FAILED"
    message = got.data.tags["rankhouse.failure"]
    assert message.startswith("loss is non-finite at epoch 3 File 'loop.py'") and "\n" not in message
    assert len(message) == 4000
