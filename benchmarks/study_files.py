"""Search-space files a benchmark derives from a shipped one (a fixed arm, a narrowed search).

A shipped space composes ``search_spaces/shared/`` through ``defaults:``, which Hydra resolves
beside the file, so a derived file is written into a folder holding a copy of ``shared/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

SHIPPED = Path(__file__).resolve().parents[1] / "search_spaces"


def write_space(doc: dict, folder: Path, name: str) -> Path:
    """``doc`` (a loaded space, changed) as ``folder/<name>.yaml``, composable as the shipped ones are."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "shared").is_dir():
        shutil.copytree(SHIPPED / "shared", folder / "shared")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
