"""The embedded corpus: rendered songs in the seed's layout, converted as a user's would be.

Each song is a stem corpus song (``trainables/data/render.py``) mixed down and encoded as
``name.mp3`` at 44.1 kHz stereo, with ``name_prompt.txt`` saying what the render knows of it
(``tags.song_tags``: style, tempo, key, drums, instruments) and no lyrics. The folder is then
converted by ``convert.convert``, the code behind ``python -m platform.data acestep``, and
the converted dataset is what a search reads: the embedded default runs the converter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import soundfile as sf

from trainables.acestep import convert, tags
from trainables.data import render, synth
from trainables.errors import RankhouseError

VERSION = 1
SONGS, DATASET = "songs", "dataset"


def render_songs(out: Path, preset: str, songs: int, seconds: float, seed: int,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """``songs`` songs in the seed's layout at ``out`` (all or nothing; reused if the same)."""
    soundfont = synth.find_soundfont()
    spec = {"kind": "acestep", "preset": preset, "songs": songs, "seconds": float(seconds), "seed": seed,
            "samplerate": render.SAMPLERATE, "version": VERSION, **synth.identity(soundfont)}

    def write_song(folder: Path, i: int) -> None:
        stems, notes = render.render_song(preset, render.song_seed(seed, i), seconds, soundfont)
        name = f"{preset}-{seed}-{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{name}.mp3", stems["mixture"].T.astype("float32") / 32768.0, render.SAMPLERATE,
                 format="MP3")
        (folder / f"{name}{convert.PROMPT}").write_text(", ".join(tags.song_tags(notes)) + "\n")

    return render.write_corpus(Path(out).resolve(), spec, songs, write_song, progress)


def embedded_dataset(section: dict, progress: Callable[[int, int], None] | None = None) -> Path:
    """The converted dataset of the corpus ``data.embedded`` describes, under rankhouse's home."""
    renderer = synth.identity(synth.find_soundfont())
    name = (f"acestep-{section['preset']}-seed{section['seed']}-{section['songs']}x{section['seconds']:g}s"
            f"-{renderer['soundfont_sha256'][:8]}-fs{renderer['fluidsynth']}-v{VERSION}")
    home = render.home() / "corpora" / name
    out = home / DATASET
    if (out / "state.json").is_file():
        return out
    print(f"rendering the embedded ACE-Step corpus ({section['songs']} {section['preset']} songs x "
          f"{section['seconds']:g} s) into {home}")
    songs = render_songs(home / SONGS, section["preset"], int(section["songs"]), float(section["seconds"]),
                         int(section["seed"]), progress)
    try:
        return convert.convert(songs, out)
    except RankhouseError:
        if (out / "state.json").is_file():  # another search converted it first
            return out
        raise
