"""Prompt tags: how a ``name_prompt.txt`` is read, what the embedded corpus says of a rendered
song, and the word tokens the tag encoder reads.

ACE-Step's converter splits a prompt on ", " exactly, so "house,126 bpm" is one tag; here a
tag is whatever lies between commas, with whitespace trimmed and empty tags dropped.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

NOTE_NAMES = ("c", "c#", "d", "d#", "e", "f", "f#", "g", "g#", "a", "a#", "b")
STYLE = {"techhouse": "tech house", "generic": "pop"}
VOCAB = 4096  # hash buckets for words; 0 is padding
MAX_TAGS, MAX_WORDS = 16, 4


def parse(text: str) -> list[str]:
    """``"tech house,  126 bpm,,kick "`` -> ``["tech house", "126 bpm", "kick"]``."""
    return [t for t in (part.strip() for part in text.split(",")) if t]


def words(tag: str) -> list[str]:
    return re.findall(r"[\w#+.-]+", tag.lower())


def token(word: str) -> int:
    """A word's bucket: a fixed hash, so no vocabulary file travels with a model."""
    return 1 + zlib.crc32(word.encode()) % (VOCAB - 1)


def tokens(tags: list[str]) -> np.ndarray:
    """(MAX_TAGS, MAX_WORDS) int64 word tokens, one row per tag (0: padding). Tags past
    ``MAX_TAGS`` and words past ``MAX_WORDS`` are dropped; no tags: all padding."""
    out = np.zeros((MAX_TAGS, MAX_WORDS), dtype=np.int64)
    for i, tag in enumerate(tags[:MAX_TAGS]):
        for j, w in enumerate(words(tag)[:MAX_WORDS]):
            out[i, j] = token(w)
    return out


def song_tags(notes: dict) -> list[str]:
    """What a rendered song's annotation (``render.annotations``) says of it: style, tempo, key,
    its drums and its instruments (General MIDI names)."""
    import pretty_midi

    meta = notes["metadata"]
    mode = "minor" if meta["preset"] == "techhouse" else "major"
    tags = [STYLE.get(meta["preset"], meta["preset"]), f"{round(notes['audio']['bpm'])} bpm",
            f"{NOTE_NAMES[meta['key'] % 12]} {mode}", "kick", "hihat"]
    for stem in ("bass", "other", "vocals"):
        program = next(p for bank, p in meta["programs"][stem] if bank == 0)
        tags.append(pretty_midi.program_to_instrument_name(program).lower())
    return list(dict.fromkeys(tags))
