"""Render composed songs to a stem corpus: ``DIR/{train,valid}/<track>/{mixture,<stem>}.wav``.

The mixture is defined as the sum of the quantised int16 stems, so ``mixture == sum(stems)``
holds bit-exactly. Each track also gets ``annotations.yaml`` in the EDM structure trainer's
format (audio: file/duration/bpm/downbeat/time_signature; structure: bar/label/time/confidence)
plus beat and downbeat times, so a structure model can train on the same corpus.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import yaml

from trainables.data import compose, synth
from trainables.errors import RankhouseError

SAMPLERATE = 44100
MANIFEST = "corpus.json"


def song_seed(seed: int, index: int) -> int:
    """A per-song seed that does not depend on how many songs are rendered."""
    return zlib.crc32(f"{seed}:{index}".encode())


def render_song(preset: str, seed: int, seconds: float, soundfont: Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Return int16 stems of shape (2, n) keyed by stem name (plus ``mixture``) and annotations."""
    song = compose.compose(compose.get_preset(preset), seed, seconds)
    soundfont = soundfont or synth.find_soundfont()
    n = int(round(seconds * SAMPLERATE))
    floats = {}
    for name, stem in song.stems.items():
        audio = synth.render(stem.notes, stem.channels, n, SAMPLERATE, soundfont)
        floats[name] = audio * np.float32(10 ** (stem.gain_db / 20))
    mix = sum(floats.values())
    # loudness varies per song; the peak of the mix and of every stem stays below full scale
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.45, 0.9)
    peak = max(float(np.abs(mix).max()), *(float(np.abs(a).max()) for a in floats.values()), 1e-6)
    scale = target / peak
    stems = {name: np.round(a * scale * 32767).astype(np.int16) for name, a in floats.items()}
    total = sum(s.astype(np.int32) for s in stems.values())
    stems["mixture"] = total.astype(np.int16)  # |total| <= target*32767 + 5*0.5 < 32767: no wrap
    return stems, annotations(song, seconds)


def annotations(song: compose.Song, seconds: float) -> dict:
    beat = song.beat_seconds
    n_beats = int(np.floor(seconds / beat)) + 1
    beats = [round(i * beat, 6) for i in range(n_beats) if i * beat < seconds]
    return {
        "audio": {"file": "mixture.wav", "duration": float(seconds), "bpm": song.bpm, "downbeat": 0.0,
                  "time_signature": [4, 4]},
        "structure": [{"bar": s.bar + 1, "label": s.label, "time": round(s.bar * 4 * beat, 6), "confidence": 1.0}
                      for s in song.sections if s.bar * 4 * beat < seconds],
        "beats": beats,
        "downbeats": beats[::4],
        "metadata": {
            "preset": song.preset, "seed": song.seed, "key": song.key, "swing": round(song.swing, 4),
            "programs": {k: [[c.bank, c.program] for c in v.channels] for k, v in song.stems.items()},
            "gains_db": {k: round(v.gain_db, 3) for k, v in song.stems.items()},
        },
    }


def write_track(folder: Path, stems: dict[str, np.ndarray], notes: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, audio in stems.items():
        sf.write(folder / f"{name}.wav", audio.T, SAMPLERATE, subtype="PCM_16")
    (folder / "annotations.yaml").write_text(yaml.safe_dump(notes, sort_keys=False))


def home() -> Path:
    """rankhouse's cache home: rendered corpora and their decoded caches."""
    return Path(os.environ.get("RANKHOUSE_HOME", Path.home() / ".cache" / "rankhouse"))


def embedded_corpus(preset: str, songs: int, seconds: float, seed: int, valid: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """The embedded corpus with these settings under ``home()``, rendered first if this machine
    has not yet (driver side: trials get the path)."""
    renderer = synth.identity(synth.find_soundfont())
    key = f"{renderer['soundfont_sha256'][:8]}-fs{renderer['fluidsynth']}"  # another soundfont: other audio
    out = home() / "corpora" / (f"{preset}-seed{seed}-{songs}x{seconds:g}s" + (f"-valid{valid}" if valid else "")
                                + f"-{key}")
    if not (out / MANIFEST).is_file():
        print(f"rendering the embedded {preset} corpus ({songs} songs x {seconds:g} s) into {out}")
    return render_corpus(out, preset, songs, seconds, seed, valid, progress=progress)


def corpus_spec(preset: str, songs: int, seconds: float, seed: int, valid: int, soundfont: Path) -> dict:
    """What a rendered corpus is: an existing one is reused only if its manifest says the same."""
    return {"preset": preset, "songs": songs, "seconds": float(seconds), "seed": seed, "valid": valid,
            "samplerate": SAMPLERATE, "version": 1, **synth.identity(soundfont)}


def render_corpus(out: Path, preset: str, songs: int, seconds: float, seed: int = 0, valid: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Render ``songs`` songs into ``out`` (train + valid), atomically: a half-rendered corpus never appears.

    The last ``valid`` songs (default: a fifth, at least one) form the valid split.
    Returns ``out``. An existing corpus with the same spec is reused as it is.
    """
    compose.get_preset(preset)
    if songs < 2:
        raise RankhouseError(f"--songs {songs}: need at least 2 songs (one for train, one for valid)")
    if seconds < 1:
        raise RankhouseError(f"--seconds {seconds}: songs must be at least 1 second long")
    valid = max(1, songs // 5) if valid is None else valid
    if not 1 <= valid < songs:
        raise RankhouseError(f"valid={valid}: need 1 <= valid < songs ({songs})")
    soundfont = synth.find_soundfont()
    spec = corpus_spec(preset, songs, seconds, seed, valid, soundfont)
    out = Path(out).resolve()
    if out == Path.cwd().resolve() or out.parent == out:
        raise RankhouseError(f"--out {out}: render into a new folder, not the current directory")

    def write_song(folder: Path, i: int) -> None:
        split = "valid" if i >= songs - valid else "train"
        stems, notes = render_song(preset, song_seed(seed, i), seconds, soundfont)
        write_track(folder / split / f"{preset}-{seed}-{i:04d}", stems, notes)

    return write_corpus(out, spec, songs, write_song, progress)


def write_corpus(out: Path, spec: dict, songs: int, write_song: Callable[[Path, int], None],
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """``write_song(folder, i)`` for every song into a temporary folder, then the manifest
    ``spec``, then one rename to ``out``: a half-written corpus never appears. Under a lock, as
    two searches may render the same embedded corpus at once; an ``out`` whose manifest is
    ``spec`` is reused as it is."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(out.parent, os.O_RDONLY)  # a lock on the folder itself: no lock file left behind
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / MANIFEST).is_file() and json.loads((out / MANIFEST).read_text()) == spec:
            return out
        if out.exists() and any(out.iterdir()):
            raise RankhouseError(f"{out}: exists and is not a corpus rendered with these settings; "
                                 "choose an empty --out")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for i in range(songs):
                write_song(tmp, i)
                if progress:
                    progress(i + 1, songs)
            (tmp / MANIFEST).write_text(json.dumps(spec, indent=1))
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.close(lock)  # releases the lock
    return out
