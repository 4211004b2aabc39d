"""A trial survives the SIGKILL of the process that trains it: Tune restarts it from its last
epoch checkpoint, it finishes its full epoch count in the same MLflow run with monotone steps,
and the study's other trial is unaffected. Real local Ray, real processes, a real SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(audio_channels=2, channels=16, depth=4, nfft=4096, samplerate=22050, segment=2, t_layers=2,
            bottom_channels=0)
EPOCHS = 3


@pytest.mark.slow
def test_a_killed_training_process_resumes_from_its_checkpoint(tmp_path):
    from trainables import htdemucs, tracking

    torch.manual_seed(0)
    base = tmp_path / "tiny.safetensors"
    htdemucs.save_checkpoint(htdemucs.new_model(htdemucs.EMBEDDED_SOURCES, TINY), base, TINY)
    summary, log = tmp_path / "summary.json", tmp_path / "tune.log"
    cmd = [sys.executable, "-m", "platform.tune", "search_spaces/techhouse.yaml", f"model.base={base}",
           "search.num_samples=2", "search.max_concurrent=2", "search.scheduler.type=fifo",
           f"train.epochs={EPOCHS}", "train.steps_per_epoch=6", "train.batch_size=2", "data.segment=2.0",
           "train.valid_max_seconds=4.0", "data.embedded.songs=4", "data.embedded.seconds=6.0",
           "resources.cpus_per_worker=0.9", "resources.max_failures=1", f"tracking.output={tmp_path / 'out'}",
           "--json", str(summary)]
    env = {**os.environ, "RANKHOUSE_HOME": str(tmp_path / "home")}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        killed = None
        deadline = time.time() + 900
        while killed is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
            found = re.search(r"^parent run: (\w+)", log.read_text(), re.M)
            if not found:
                continue
            mlflow = tracking.client(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
            parent = mlflow.get_run(found.group(1))
            for run in tracking.children(mlflow, parent.info.experiment_id, parent.info.run_id):
                done = tracking.epochs(mlflow, run.info.run_id, "valid/sdr")
                if len(done) == 1 and "rankhouse.pid" in run.data.tags:  # mid-trial: epoch 1 of 3 logged
                    killed = (run.info.run_id, int(run.data.tags["rankhouse.pid"]))
                    os.kill(killed[1], signal.SIGKILL)
                    break
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
            # the lost attempt logged epoch 1; at most that one epoch is trained again
            assert steps.count(1) <= 2 and int(run.data.tags["rankhouse.resumed_from_epoch"]) in (0, 1)
        else:
            assert steps == list(range(1, EPOCHS + 1)) and "rankhouse.restarts" not in run.data.tags
