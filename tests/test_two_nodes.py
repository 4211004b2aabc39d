"""A search on a two-node Ray cluster on loopback (127.0.0.2 head, 127.0.0.3 worker; token
authentication, as cluster.yaml sets on every node): trials land on both nodes, with one shared
storage path; a client without the token is refused; exactly those two nodes are stopped
afterwards (never ``ray stop``, which would stop every Ray here)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from benchmarks.loopback_cluster import LoopbackCluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_trials_land_on_both_nodes_of_a_loopback_cluster(tiny_search, tmp_path):
    from trainables import tracking

    cluster = LoopbackCluster(tmp_path, nodes=2, cpus=1, base_env=tiny_search.env)
    with cluster:
        summary = tmp_path / "summary.json"
        proc = subprocess.run(
            tiny_search.cmd("search.num_samples=2", "search.max_concurrent=2", "train.epochs=1",
                            "train.steps_per_epoch=2", f"run.storage_path={tmp_path / 'shared' / 'ray'}",
                            "--json", str(summary)),
            cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads(summary.read_text())
        mlflow = tracking.client(result["tracking_uri"])
        runs = [mlflow.get_run(t["run_id"]) for t in result["trials"]]
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags["rankhouse.node"] for r in runs} == {"127.0.0.2", "127.0.0.3"}
        assert not (tiny_search.out / "ray").exists()
        # both nodes wrote to the shared path
        assert len(list((tmp_path / "shared" / "ray").glob("*/trial_*/checkpoint_*"))) >= 2
        # a client with a wrong token, or with none, is refused by the cluster the search just used
        stranger = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        for client in ({**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex},
                       {**stranger, "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)}):  # no ~/.ray/auth_token
            joined = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{cluster.env['RAY_ADDRESS']}'); "
                                     "print(ray.cluster_resources())"], env=client, capture_output=True,
                                    text=True, timeout=300)
            assert joined.returncode != 0 and "CPU" not in joined.stdout, joined.stdout
            assert "Authentication token is missing or incorrect" in joined.stderr, joined.stderr[-2000:]
    assert cluster.stopped()
