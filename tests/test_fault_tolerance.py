"""A trial survives the SIGKILL of the process that trains it: Tune restarts it from its last
epoch checkpoint, it finishes its full epoch count in the same MLflow run with monotone steps,
and the study's other trial is unaffected. Real local Ray, real processes, a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


@pytest.mark.slow
def test_a_killed_training_process_resumes_from_its_checkpoint(tiny_search, tmp_path):
    from trainables import tags, tracking

    summary, log = tmp_path / "summary.json", tmp_path / "tune.log"
    # 12 steps an epoch: the kill's window, from Tune taking in epoch 1 to the trial logging epoch 2,
    # must outlast the watcher's poll and the driver's lag on a loaded machine (6 missed it in CI)
    cmd = tiny_search.cmd("search.num_samples=2", "search.max_concurrent=2", f"train.epochs={EPOCHS}",
                          "train.steps_per_epoch=12", "resources.max_failures=1", "--json", str(summary))

    def kill_mid_trial(parent_id, runs):
        """SIGKILL a trial's process once Tune's driver has taken in its epoch-1 result, the
        checkpoint with it (the driver writes the trial's result.json after registering the
        checkpoint), and before epoch 2 is logged."""
        mlflow = tracking.client(f"sqlite:///{tiny_search.out / 'mlflow.db'}")
        for run in runs:
            trial = run.data.tags.get(tags.TRIAL_ID)
            if trial is None or tags.PID not in run.data.tags:
                continue
            results = list(tiny_search.out.glob(f"ray/*/trial_{trial}/result.json"))
            taken_in = results and results[0].read_text().count("\n") >= 1
            if taken_in and len(tracking.epochs(mlflow, run.info.run_id, "valid/sdr")) == 1:
                os.kill(int(run.data.tags[tags.PID]), signal.SIGKILL)
                return run.info.run_id, int(run.data.tags[tags.PID])
        return None

    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=tiny_search.env, stdout=out, stderr=subprocess.STDOUT)
        killed = tiny_search.watch(proc, log, kill_mid_trial)
        code = proc.wait(timeout=900)
    assert killed is not None, "no trial was caught mid-training: " + log.read_text()[-2000:]
    assert code == 0, log.read_text()[-3000:]
    result = json.loads(summary.read_text())
    assert [t["status"] for t in result["trials"]] == ["FINISHED", "FINISHED"]
    mlflow = tracking.client(result["tracking_uri"])
    runs = list(tracking.children(mlflow, mlflow.get_run(result["parent_run_id"]).info.experiment_id,
                                  result["parent_run_id"]))
    assert len(runs) == 2  # the retried trial kept its one run
    for run in runs:
        steps = [m.step for m in sorted(mlflow.get_metric_history(run.info.run_id, "valid/sdr"),
                                        key=lambda m: m.timestamp)]
        assert steps == sorted(steps) and set(steps) == set(range(1, EPOCHS + 1))  # monotone, every epoch
        assert len(tracking.epochs(mlflow, run.info.run_id, "valid/sdr")) == EPOCHS
        if run.info.run_id == killed[0]:
            assert int(run.data.tags["rankhouse.pid"]) != killed[1]  # finished in a new process
            assert run.data.tags["rankhouse.restarts"] == "1"
            # the retry continued from the epoch-1 checkpoint the killed attempt wrote: epoch 1 is
            # not trained (nor logged) again, and a restart from scratch would say 0 here
            assert int(run.data.tags[tags.RESUMED_FROM_EPOCH]) == 1
            assert steps.count(1) == 1
        else:
            assert steps == list(range(1, EPOCHS + 1)) and "rankhouse.restarts" not in run.data.tags
