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
