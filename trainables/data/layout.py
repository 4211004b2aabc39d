"""The stem-folder layout shared by HT-Demucs and MSST: ``root/{train,valid}/<track>/{mixture,<stem>}.<ext>``.

A model's *sources* are named by the config; each is the sum of one or more *stems* on disk,
so a 4-stem model (``drums: [kick, hihat]``) and a 5-stem model train from the same folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from trainables.data.audio import AUDIO_EXTENSIONS
from trainables.errors import RankhouseError

SPLITS = ("train", "valid")
MIXTURE = "mixture"

Sources = dict[str, list[str]]


def normalize_sources(sources: Sequence[str] | Mapping[str, Sequence[str] | str]) -> Sources:
    """``[a, b]`` or ``{a: [x, y], b: b}`` -> ``{a: [x, y], b: [b]}`` (a source = sum of stems)."""
    if isinstance(sources, str):
        sources = [s.strip() for s in sources.split(",") if s.strip()]
    if isinstance(sources, Mapping):
        out = {str(k): ([v] if isinstance(v, str) else [str(x) for x in v]) for k, v in sources.items()}
    else:
        out = {str(s): [str(s)] for s in sources}
    if not out:
        raise RankhouseError("sources: empty; name at least one source, e.g. kick,hihat,bass,other,vocals")
    for name, stems in out.items():
        if not name or not stems or any(not s for s in stems):
            raise RankhouseError(f"sources.{name}: empty source or stem name in {stems}; "
                                 "give the stem files it sums, e.g. drums=kick+hihat")
        if MIXTURE in stems:
            raise RankhouseError(f"sources.{name}: '{MIXTURE}' is the model input, not a stem")
    return out


def stems_of(sources: Sources) -> list[str]:
    seen: list[str] = []
    for stems in sources.values():
        seen += [s for s in stems if s not in seen]
    return seen


def tracks(root: Path, split: str) -> list[Path]:
    folder = Path(root) / split
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_file(track: Path, name: str) -> Path | None:
    """``track/name.<audio ext>``; the first extension in AUDIO_EXTENSIONS order wins."""
    for ext in AUDIO_EXTENSIONS:
        p = track / f"{name}{ext}"
        if p.is_file():
            return p
    return None
