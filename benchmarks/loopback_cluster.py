"""A Ray cluster of several nodes on this machine's loopback addresses (head 127.0.0.2, workers
127.0.0.3, ...), with token authentication as ``cluster.yaml`` sets on every node; a context
manager. Used by the two-node test and by ``benchmarks/scale.py``, whose nodes declare logical
GPUs that no CUDA stands behind.

Its processes are found by an owner mark in their environment and stopped by pid, never by
``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path


class LoopbackCluster:
    """``nodes`` Ray nodes, each declaring ``cpus`` and ``gpus`` (logical). ``env`` is the
    environment a driver joining it needs (``RAY_ADDRESS``, the token); ``processes`` the nodes'
    [pid, start time] once started."""

    def __init__(self, work: Path, nodes: int = 2, cpus: float = 1, gpus: float = 0, base_env: dict | None = None,
                 object_store_mb: int | None = None):
        from benchmarks.local_servers import free_port
        from platform.ray_session import OWNER_VAR

        self.nodes, self.cpus, self.gpus, self.object_store_mb = nodes, cpus, gpus, object_store_mb
        self.owner = f"loopback-{uuid.uuid4().hex[:8]}"
        secret = Path(work) / "auth_token"  # the cluster's token, as scripts/cluster_secrets.sh makes it
        secret.write_text(uuid.uuid4().hex)
        secret.chmod(0o600)
        self.node_env = {**(base_env if base_env is not None else os.environ), "RAY_AUTH_MODE": "token",
                         "RAY_AUTH_TOKEN_PATH": str(secret), OWNER_VAR: self.owner}
        self.node_env.pop("RAY_ADDRESS", None)
        self.head = "127.0.0.2"
        self.port = free_port(self.head)
        # a driver's environment lacks the owner mark: what it starts (a store's server) is not the cluster's
        self.env = {**{k: v for k, v in self.node_env.items() if k != OWNER_VAR},
                    "RAY_ADDRESS": f"{self.head}:{self.port}"}
        self.processes: list[list] = []

    def addresses(self) -> list[str]:
        return [f"127.0.0.{2 + i}" for i in range(self.nodes)]

    def __enter__(self) -> "LoopbackCluster":
        from platform.ray_session import ray_processes

        ray_bin = str(Path(sys.executable).with_name("ray"))
        try:
            for i, ip in enumerate(self.addresses()):
                where = (["--head", f"--port={self.port}", "--include-dashboard=false"] if i == 0
                         else [f"--address={self.head}:{self.port}"])
                sizes = [f"--num-cpus={self.cpus:g}", f"--num-gpus={self.gpus:g}"]
                if self.object_store_mb:
                    sizes.append(f"--object-store-memory={self.object_store_mb * 2**20}")
                started = subprocess.run([ray_bin, "start", *where, f"--node-ip-address={ip}", *sizes,
                                          "--disable-usage-stats"], env=self.node_env, capture_output=True,
                                         text=True, timeout=180)
                if started.returncode != 0:
                    raise RuntimeError(f"ray start on {ip} failed: {started.stdout[-2000:]}{started.stderr[-2000:]}")
        except BaseException:
            self.__exit__()
            raise
        self.processes = ray_processes(self.owner)
        return self

    def __exit__(self, *exc) -> None:
        from platform.ray_session import ray_processes, running

        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            # a driver still connected to a cluster that is gone waits 60 s for it, then aborts
            # (and an exception on its way out is never printed)
            sys.modules["ray"].shutdown()
        found = ray_processes(self.owner) + self.processes
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid, started in found:
                if running(pid, started):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            time.sleep(1)

    def stopped(self) -> bool:
        from platform.ray_session import running

        return bool(self.processes) and not [pid for pid, started in self.processes if running(pid, started)]
