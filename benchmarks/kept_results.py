"""A benchmark's results kept in a folder (``--out DIR``), so that a measurement longer than one
sitting is run in parts: each finished row is saved at once, and a rerun with the same settings
keeps those rows and runs only what they lack.

Every row records the settings it was measured with and the code it ran (``commit``): rows of
other settings are refused, and rows of other code are kept but named in the table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE = "results.json"


def commit() -> str:
    """The code a row is measured on: HEAD, with ``+changes`` when the code that runs differs."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "platform", "trainables", "search_spaces",
                            "benchmarks"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def load(folder: Path, settings: dict, name: str = FILE) -> list[dict]:
    """The rows kept in ``folder/name`` (none for a new folder). Rows measured with other settings
    stop the benchmark with one line: they would not belong in this run's table."""
    path = folder / name
    rows = json.loads(path.read_text()) if path.is_file() else []
    mine = json.dumps(settings, sort_keys=True)
    other = {json.dumps(r["settings"], sort_keys=True) for r in rows} - {mine}
    if other:
        raise SystemExit(f"{path}: its rows were run with {other.pop()}, not {mine}; "
                         "pass the same options or another --out")
    return rows


def save(folder: Path, rows: list[dict], name: str = FILE) -> None:
    """All rows, replacing the file whole: a run killed mid-write keeps the rows saved before."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (name + ".part")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(folder / name)


def code_line(rows: list[dict]) -> str:
    commits = sorted({r["commit"] for r in rows})
    return f"code: {', '.join(commits)}" + (" (rows measured on different code: compare with care)"
                                            if len(commits) > 1 else "")
