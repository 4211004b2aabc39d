"""How many trials run side by side, and what a request no node can satisfy does."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform import spaces
from platform.tune import concurrency
from trainables.errors import RankhouseError

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "techhouse.yaml"


def test_trials_fit_the_cpus():
    study = spaces.load(SPACE, ["search.max_concurrent=4"])
    assert concurrency(study, 2, 0) == 2  # direct: one CPU per trial
    train = spaces.load(SPACE, ["search.max_concurrent=4", "resources.executor=train"])
    assert concurrency(train, 2, 0) == 1  # a CPU per worker plus the trial function's sliver


def test_a_gpu_request_on_a_local_machine_without_gpus_is_an_error():
    study = spaces.load(SPACE, ["resources.gpus_per_worker=0.5"])
    with pytest.raises(RankhouseError, match=r"techhouse.yaml: resources: a trial needs 1 CPUs and 0.5 GPUs"):
        concurrency(study, 2, 0)


def test_fractional_gpus_share_a_device_and_an_autoscaling_cluster_waits_for_nodes():
    study = spaces.load(SPACE, ["resources.gpus_per_worker=0.25", "search.max_concurrent=8"])
    assert concurrency(study, 16, 1) == 4
    assert concurrency(study, 2, 0, autoscaling=True) == 8


def test_a_search_no_machine_can_hold_is_refused_before_anything_runs(tmp_path):
    """One line and exit 2; no corpus rendered, no Ray started, no MLflow run left behind to
    shadow the study's last real search."""
    import os
    import subprocess
    import sys

    out, home = tmp_path / "out", tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "platform.tune", str(SPACE), "resources.cpus_per_worker=512",
                           f"tracking.output={out}"], cwd=SPACE.parents[1], capture_output=True, text=True,
                          env={**os.environ, "RANKHOUSE_HOME": str(home)}, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rankhouse: error: {SPACE}: resources: a trial needs 512 CPUs and 0 GPUs but the cluster has "
        f"{os.cpu_count()} and 0; lower resources.cpus_per_worker or resources.gpus_per_worker"]
    assert not home.exists()  # nothing rendered
    assert not out.exists() or not any(out.iterdir())  # no Ray session, no MLflow store
