"""Where embedded corpora live, and rendering them on first use (driver side)."""

from __future__ import annotations

import os
from pathlib import Path

from platform.data import Progress
from trainables.data import render


def home() -> Path:
    """rankhouse's cache home: rendered corpora and their decoded caches."""
    return Path(os.environ.get("RANKHOUSE_HOME", Path.home() / ".cache" / "rankhouse"))


def embedded_corpus(preset: str, songs: int, seconds: float, seed: int, valid: int | None = None) -> Path:
    """Path of the rendered corpus, rendering it first if this machine has not yet."""
    out = home() / "corpora" / (f"{preset}-seed{seed}-{songs}x{seconds:g}s" + (f"-valid{valid}" if valid else ""))
    if not (out / render.MANIFEST).is_file():
        print(f"rendering the embedded {preset} corpus ({songs} songs x {seconds:g} s) into {out}")
    return render.render_corpus(out, preset, songs, seconds, seed, valid, progress=Progress(f"render {preset}"))
