"""Search-space files a benchmark derives from a shipped one (a fixed arm, a narrowed search),
and ``python -m platform.tune`` run on one as a user runs it.

A shipped space composes ``search_spaces/shared/`` through ``defaults:``, which Hydra resolves
beside the file, so a derived file is written into a folder holding a copy of ``shared/``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "search_spaces"


def write_space(doc: dict, folder: Path, name: str) -> Path:
    """``doc`` (a loaded space, changed) as ``folder/<name>.yaml``, composable as the shipped ones are."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "shared").is_dir():
        shutil.copytree(SHIPPED / "shared", folder / "shared")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_cli(cmd: list[str], ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """``cmd`` run from the repository root; an exit status outside ``ok`` stops the benchmark
    with the command's output, the part a user would need to see what went wrong."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return proc


def run_search(space: Path, overrides: list[str], out: Path) -> dict:
    """``python -m platform.tune space overrides`` into ``out``: its summary, which must name a
    best trial with an adapter. A failure stops the benchmark with the command's output."""
    summary = out / "summary.json"
    run_cli([sys.executable, "-m", "platform.tune", str(space), *overrides, f"tracking.output={out}",
             "--json", str(summary)])
    result = json.loads(summary.read_text())
    if result["best"] is None:
        raise SystemExit(f"{summary}: no trial kept an adapter (every trial failed or stopped before an epoch)")
    return result
