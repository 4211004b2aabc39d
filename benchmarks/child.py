"""Measuring a command in a process of its own: its wall time and its peak resident memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ``python -c PEAK module args...`` runs a module as ``python -m`` does and prints the process'
# own peak RSS (ru_maxrss) as a JSON line when it exits
PEAK = ("import atexit, json, resource, runpy, sys; "
        "atexit.register(lambda: print(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss "
        "/ 1024}))); sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")


def peak_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` that also reports its peak RSS."""
    return [sys.executable, "-c", PEAK, module, *args]


def run(cmd: list[str]) -> dict:
    """Run ``cmd`` from the repository root: ``{"wall": seconds, **its last JSON line}`` (the
    child's own timings, when it reports them, and ``rss_mb``); a failure stops the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    doc = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    return {"wall": wall, **doc}
