"""Real servers and a real browser for the tests that check what a user sees: ``mlflow server``
on 127.0.0.1 over a study's store, PostgreSQL, and headless Chromium's DOM dump of a page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a store, as a user runs it; a context manager."""

    def __init__(self, store: str, env: dict | None = None):
        self.store, self.env = store, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        import sys

        return [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", self.store, "--host",
                "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def __enter__(self) -> "MlflowServer":
        import subprocess
        import time
        import urllib.error
        import urllib.request

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
        import os
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def rendered_text(url: str, work: Path) -> str:
    """The page's text after its JavaScript ran, from headless Chromium's DOM dump (Debian's
    chromium, which ``make test`` installs when it runs as root)."""
    import re
    import subprocess

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no Debian chromium here and not root to install it: apt-get install chromium")
    # the flags keep Chromium off this machine's closed network and out of the user's profile
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={work / 'chromium'}", "--virtual-time-budget=30000",
                          "--window-size=2400,1400",  # the runs table renders only the columns in view
                          "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0 and dom.stdout, dom.stderr[-2000:]
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1 with a database ``rankhouse`` (Debian's
    postgresql, which ``make test`` installs when it runs as root); a context manager. PostgreSQL
    refuses to run as root, so as root its commands run as the ``postgres`` user."""

    def __enter__(self) -> "Postgres":
        import os
        import subprocess
        import tempfile

        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            pytest.skip("no PostgreSQL server here and not root to install it: apt-get install postgresql")
        self.bin = found[-1].parent
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.data = Path(tempfile.mkdtemp(prefix="rankhouse-pg-"))  # outside pytest's root-only tmp
        if self.as_user:
            shutil.chown(self.data, "postgres")
        self.port = free_port()
        self.url = f"postgresql://rankhouse@127.0.0.1:{self.port}/rankhouse"

        def run(*cmd: str) -> None:
            done = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        run(str(self.bin / "initdb"), "-D", str(self.data / "db"), "-U", "rankhouse", "-A", "trust", "--no-sync")
        run(str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-l", str(self.data / "log"), "-w", "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.data} -c fsync=off",
            "start")
        self.stop = lambda: run(str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-m", "immediate", "stop")
        run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "rankhouse", "rankhouse")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.data, ignore_errors=True)
