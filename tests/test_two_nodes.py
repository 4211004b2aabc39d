"""A search on a two-node Ray cluster on loopback (127.0.0.2 head, 127.0.0.3 worker; Ray >= 2.59
token authentication): trials land on both nodes, with one shared storage path, and exactly
those two nodes are stopped afterwards (never ``ray stop``, which would stop every Ray here)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(audio_channels=2, channels=16, depth=4, nfft=4096, samplerate=22050, segment=2, t_layers=2,
            bottom_channels=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return sock.getsockname()[1]


def stop(processes: list[list]) -> None:
    from platform.tune import running

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, started in processes:
            if running(pid, started):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        time.sleep(1)


@pytest.mark.slow
def test_trials_land_on_both_nodes_of_a_loopback_cluster(tmp_path):
    from platform.tune import OWNER_VAR, ray_processes, running
    from trainables import htdemucs, tracking

    torch.manual_seed(0)
    base = tmp_path / "tiny.safetensors"
    htdemucs.save_checkpoint(htdemucs.new_model(htdemucs.EMBEDDED_SOURCES, TINY), base, TINY)
    token = f"two-nodes-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", OWNER_VAR: token, "RANKHOUSE_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    nodes: list[list] = []
    try:
        for args in (["--head", "--node-ip-address=127.0.0.2", f"--port={port}", "--include-dashboard=false"],
                     [f"--address=127.0.0.2:{port}", "--node-ip-address=127.0.0.3"]):
            started = subprocess.run([ray_bin, "start", *args, "--num-cpus=1", "--disable-usage-stats"], env=env,
                                     capture_output=True, text=True, timeout=180)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        nodes = ray_processes(token)
        summary = tmp_path / "summary.json"
        out = tmp_path / "runs"
        proc = subprocess.run(
            [sys.executable, "-m", "platform.tune", "search_spaces/techhouse.yaml", f"model.base={base}",
             "search.num_samples=2", "search.max_concurrent=2", "search.scheduler.type=fifo", "train.epochs=1",
             "train.steps_per_epoch=2", "train.batch_size=2", "data.segment=2.0", "train.valid_max_seconds=4.0",
             "data.embedded.songs=4", "data.embedded.seconds=6.0", "resources.cpus_per_worker=0.9",
             f"tracking.output={out}", f"run.storage_path={tmp_path / 'shared' / 'ray'}", "--json", str(summary)],
            cwd=ROOT, env={**env, "RAY_ADDRESS": f"127.0.0.2:{port}"}, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads(summary.read_text())
        mlflow = tracking.client(result["tracking_uri"])
        runs = [mlflow.get_run(t["run_id"]) for t in result["trials"]]
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags["rankhouse.node"] for r in runs} == {"127.0.0.2", "127.0.0.3"}
        assert not (out / "ray").exists()
        assert len(list((tmp_path / "shared" / "ray").glob("*/trial_*/checkpoint_*"))) >= 2  # both nodes wrote to the shared path
    finally:
        nodes = nodes or ray_processes(token)
        stop(ray_processes(token) + nodes)
    assert nodes and not [pid for pid, started in nodes if running(pid, started)]
