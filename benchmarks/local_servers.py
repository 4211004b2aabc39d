"""Servers on 127.0.0.1 for the tests and ``benchmarks/scale.py``, each a context manager:
``mlflow server`` over a store, as a user runs it, and a throwaway PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over ``store`` with ``workers`` worker processes; the
    artifacts it receives go to ``artifacts`` (else its working directory's ``mlartifacts``)."""

    def __init__(self, store: str, env: dict | None = None, workers: int = 1, artifacts: Path | None = None):
        self.store, self.env, self.workers, self.artifacts = store, env, workers, artifacts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", self.store, "--host",
                "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
                *(["--artifacts-destination", str(self.artifacts)] if self.artifacts else [])]

    def __enter__(self) -> "MlflowServer":
        self.proc = subprocess.Popen(self.argv(), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self
            except urllib.error.HTTPError:  # it answers (a server with auth may refuse even /health)
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"mlflow server on {self.url} did not answer /health in 120 s")

    def __exit__(self, *exc) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def initdb() -> Path | None:
    """The newest installed PostgreSQL's ``initdb``, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1] if found else None


class Postgres:
    """A PostgreSQL server with a database ``rankhouse`` (Debian's postgresql, which ``make test``
    installs when it runs as root). PostgreSQL refuses to run as root, so as root its commands
    run as the ``postgres`` user."""

    def __enter__(self) -> "Postgres":
        found = initdb()
        if found is None:
            raise RuntimeError("no PostgreSQL server here: apt-get install postgresql")
        self.bin = found.parent
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.data = Path(tempfile.mkdtemp(prefix="rankhouse-pg-"))  # outside pytest's root-only tmp
        if self.as_user:
            shutil.chown(self.data, "postgres")
        self.port = free_port()
        self.url = f"postgresql://rankhouse@127.0.0.1:{self.port}/rankhouse"

        def run(*cmd: str) -> None:
            done = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{cmd[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

        self.stop = lambda: None
        try:
            run(str(self.bin / "initdb"), "-D", str(self.data / "db"), "-U", "rankhouse", "-A", "trust", "--no-sync")
            run(str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-l", str(self.data / "log"), "-w", "-o",
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.data} -c fsync=off",
                "start")
            self.stop = lambda: run(str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-m", "immediate", "stop")
            run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "rankhouse", "rankhouse")
        except BaseException:  # a server that started is stopped, and its folder removed
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.data, ignore_errors=True)
