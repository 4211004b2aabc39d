"""Real servers and a real browser for the tests that check what a user sees: ``mlflow server``
on 127.0.0.1 over a study's store, PostgreSQL, and headless Chromium's DOM dump of a page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.local_servers import MlflowServer, free_port

__all__ = ["MlflowServer", "free_port", "postgres", "rendered_text"]


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


def postgres():
    """A throwaway PostgreSQL server (``benchmarks.local_servers.Postgres``); the test is skipped where
    none is installed."""
    from benchmarks.local_servers import Postgres, initdb

    if initdb() is None:
        pytest.skip("no PostgreSQL server here and not root to install it: apt-get install postgresql")
    return Postgres()
