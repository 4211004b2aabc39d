"""What the end-to-end tests of a family share: a search space written into a fresh folder,
``platform.tune`` then ``platform.promote`` run as a user runs them (their own processes, a
rendering home of their own), and a runner for the commands that follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def search_and_promote(work: Path, name: str, space_text: str) -> dict:
    """``work/name.yaml`` from ``space_text`` (``OUT`` -> ``work/out``), searched and promoted:
    ``{"work", "run", "tune", "promote", "summary"}``; ``run(module, *args)`` runs a command."""
    space = work / f"{name}.yaml"
    space.write_text(space_text.replace("OUT", str(work / "out")))
    env = {**os.environ, "RANKHOUSE_HOME": str(work / "home")}

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=1500)

    tune = run("platform.tune", str(space), "--json", str(work / "summary.json"))
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    promote = run("platform.promote", str(space), "--json", str(work / "promote.json"))
    return {"work": work, "run": run, "tune": tune, "promote": promote,
            "summary": json.loads((work / "summary.json").read_text())}
