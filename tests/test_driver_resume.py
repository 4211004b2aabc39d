"""``platform.tune --resume`` after the driver is SIGKILLed mid-search: the study continues in
the same MLflow parent run, finished trials are not run again, the interrupted one resumes, no
trial or Optuna trial is duplicated, and the Ray processes the dead driver left are stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS = 3, 2


def title(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split() or [""])[0]
    except OSError:
        return ""


@pytest.mark.slow
def test_a_killed_driver_resumes_the_study(tiny_search, tmp_path):
    from platform.ray_session import stale_ray_processes
    from trainables import tags, tracking

    # Tune saves its experiment state at most once a second: the kill below waits for a save
    out, env = tiny_search.out, {**tiny_search.env, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = tiny_search.cmd(f"search.num_samples={TRIALS}", "search.max_concurrent=1", f"train.epochs={EPOCHS}",
                          "train.steps_per_epoch=16")  # an epoch outlasts a state save and a poll
    log = tmp_path / "first.log"

    def kill_between_trials(parent_id, runs):
        """A trial finished; the running one's epoch-1 checkpoint has been taken in by the driver
        (its result.json) and saved with Tune's experiment state since: kill the driver. The
        second and the third trial each give that window (one alone was missed on a busy machine)."""
        done = [r for r in runs if r.info.status == "FINISHED"]
        running = [r for r in runs if r.info.status == "RUNNING" and tags.TRIAL_ID in r.data.tags]
        if not done or len(running) != 1:
            return None
        results = list(out.glob(f"ray/*/trial_{running[0].data.tags[tags.TRIAL_ID]}/result.json"))
        states = list(out.glob("ray/*/experiment_state-*.json"))
        if not results or not results[0].read_text().count("\n") or not states:
            return None
        if states[0].stat().st_mtime_ns <= results[0].stat().st_mtime_ns:
            return None
        os.kill(driver.pid, signal.SIGKILL)
        return parent_id, done[0], running[0]

    with open(log, "w") as sink:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        parent_id, first, interrupted = tiny_search.watch(driver, log, kill_between_trials) or (None, None, None)
        driver.wait(timeout=60)
    assert first is not None, "the driver was not caught mid-search: " + log.read_text()[-2000:]
    mlflow = tracking.client(f"sqlite:///{out / 'mlflow.db'}")
    left = stale_ray_processes(out)
    names = {title(pid) for pid in left}
    # a SIGKILLed driver's local Ray leaves its dashboard and runtime-env agents behind
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
    assert mlflow.get_run(parent_id).info.status == "RUNNING"

    summary = tmp_path / "summary.json"
    proc = subprocess.run([*cmd, "--resume", "--json", str(summary)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["parent_run_id"] == parent_id and f"parent run: {parent_id}" in proc.stdout
    assert mlflow.get_run(parent_id).info.status == "FINISHED"
    assert mlflow.get_run(parent_id).data.tags["rankhouse.resumes"] == "1"
    assert len(result["trials"]) == TRIALS and {t["status"] for t in result["trials"]} == {"FINISHED"}
    assert len({t["trial_id"] for t in result["trials"]}) == TRIALS
    for t in result["trials"]:
        assert t["epochs"] == EPOCHS
    # the interrupted trial continued from the epoch-1 checkpoint its first process wrote
    assert mlflow.get_run(interrupted.info.run_id).data.tags[tags.RESUMED_FROM_EPOCH] == "1"
    assert [m.step for m in mlflow.get_metric_history(interrupted.info.run_id, "valid/sdr")].count(1) == 1
    # the trial that had finished was not trained again
    again = mlflow.get_metric_history(first.info.run_id, "valid/sdr")
    assert sorted(m.step for m in again) == list(range(1, EPOCHS + 1))
    assert mlflow.get_run(first.info.run_id).info.end_time == first.info.end_time
    # the Optuna record holds each Tune trial once, finished, in the same study
    import optuna

    from platform.searcher import TRIAL_ATTR

    study = optuna.load_study(study_name=f"techhouse-{parent_id}", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * TRIALS
    assert sorted(t.user_attrs[TRIAL_ATTR] for t in study.trials) == sorted(t["trial_id"] for t in result["trials"])
    # a trial the driver started just before it died, unknown to Tune's saved state, is closed as
    # lost (and left out of the summary and the record) rather than left RUNNING
    lost = [r for r in tracking.children(mlflow, mlflow.get_run(parent_id).info.experiment_id, parent_id)
            if "rankhouse.lost" in r.data.tags]
    assert all(r.info.status == "KILLED" for r in lost)
    assert not [pid for pid in left if title(pid)], "the dead driver's Ray was left running"  # zombies: no title
    # what was still running when --resume started: at least the two agents (the rest may have exited)
    assert int(re.search(r"resume: stopped (\d+) process", proc.stdout).group(1)) >= 2
