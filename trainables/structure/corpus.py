"""Rendered structure songs: arrangements that vary, sections you can hear.

Each song draws its own arrangement: 30 to 120 s, sections of 4, 8 or 16 bars, an intro and
an outro around one to three buildup -> drop cycles, a breakdown before some of them, a drop
sometimes repeated and a buildup sometimes omitted. A model that ignores the audio cannot
place the boundaries: the training split's most common arrangement (the template baseline)
fits few songs.

What makes each section audible (``ACTIVITY`` plus the cues added here):
- intro: kick and hi-hats, chords; no bass line, no voice;
- buildup: the kick and bass drop out, a snare roll doubles its rate every bar (quarters,
  eighths, sixteenths) and a rising lead climbs a step per beat, ending in a reverse cymbal;
- drop: every stem, a crash cymbal on its first beat;
- breakdown: no kick, no hi-hats, no bass line: chords and voice only;
- outro: kick, hi-hats and bass; no chords, no voice.

A dataset is a folder of annotation YAML files in the EDM trainer's format beside mono FLAC
files, split into ``train/`` and ``valid/``.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import yaml

from trainables.data import compose, render, synth
from trainables.data.compose import LABELS, Section
from trainables.data.synth import DRUM_CHANNEL, Channel, Note
from trainables.errors import RankhouseError

SAMPLERATE = 22050  # mono FLAC: every backbone resamples to its own rate
VERSION = 1
CRASH, SNARE, REVERSE_CYMBAL, SAW_LEAD = 49, 38, 119, 81

ACTIVITY = {
    "intro": ("kick", "hihat", "other"),
    "buildup": ("hihat", "other"),
    "drop": compose.STEMS,
    "breakdown": ("other", "vocals"),
    "outro": ("kick", "hihat", "bass"),
}


def plan(seconds_range: tuple[float, float]) -> Callable[[float, np.random.Generator], list[Section]]:
    """``compose``'s ``plan``: a random arrangement of a song lasting ``seconds_range``."""

    def arrangement(bpm: float, rng: np.random.Generator) -> list[Section]:
        bar_s = 4 * 60.0 / bpm
        lo, hi = int(np.ceil(seconds_range[0] / bar_s)), int(seconds_range[1] // bar_s)
        bars = min(max(int(rng.uniform(*seconds_range) / bar_s), lo), hi)
        intro = [("intro", int(rng.choice((4, 8, 16))))] if rng.random() < 0.85 else []
        outro = [("outro", int(rng.choice((4, 8))))] if rng.random() < 0.85 else []
        body: list[tuple[str, int]] = []
        length = lambda *parts: sum(n for part in parts for _, n in part)
        for drop in itertools.count():  # cycles of (breakdown) (buildup) drop: three, more if still too short
            if drop >= 3 and length(intro, body, outro) >= lo:
                break
            cycle = []
            if rng.random() < (0.6 if drop else 0.25):
                cycle.append(("breakdown", int(rng.choice((4, 8, 16)))))
            if drop == 0 or rng.random() < 0.8:  # a later drop may come without a buildup
                cycle.append(("buildup", int(rng.choice((4, 8)))))
            cycle.append(("drop", int(rng.choice((8, 16)))))
            if body and (length(intro, body, outro) >= bars or length(intro, body, cycle, outro) > hi):
                break
            body += cycle
        if length(intro, body, outro) < lo:  # no whole cycle fits: the last drop goes on
            body[-1] = (body[-1][0], body[-1][1] + lo - length(intro, body, outro))
        sections, bar = [], 0
        for label, n in intro + body + outro:
            if sections and sections[-1].label == label:  # a drop right after a drop is one section
                sections[-1].bars += n
            else:
                sections.append(Section(label, bar, n))
            bar += n
        return sections

    return arrangement


def add_cues(song: compose.Song, rng: np.random.Generator) -> None:
    """Snare rolls and a rising lead into every drop's buildup, a crash on every drop."""
    step = song.beat_seconds / 4
    kick, other = song.stems["kick"], song.stems["other"]
    lead = Channel(2, 0, SAW_LEAD, pan=64, reverb=40)
    fx = Channel(3, 0, REVERSE_CYMBAL, pan=64, reverb=60)
    other.channels.extend([lead, fx])
    root = 60 + song.key
    for s in song.sections:
        start = s.bar * 16
        if s.label == "drop":
            kick.notes.append(Note(start * step, 8 * step, DRUM_CHANNEL, CRASH, int(rng.integers(105, 121))))
        if s.label != "buildup":
            continue
        for b in range(s.bars):
            rate = 4 >> min(2, max(0, b - (s.bars - 3)))  # 16th steps between hits: 4, 2, then 1 in the last bar
            for k in range(0, 16, rate):
                velocity = int(60 + 60 * (b * 16 + k) / (s.bars * 16))
                kick.notes.append(Note((start + b * 16 + k) * step, step, DRUM_CHANNEL, SNARE, velocity))
        climb = min(s.bars, 2) * 4  # the last two bars: one step up per beat
        for i in range(climb):
            at = (start + (s.bars * 16 - climb * 4) + 4 * i) * step
            other.notes.append(Note(at, 4 * step * 0.9, 2, root + 2 * i, 70 + 3 * i))
        other.notes.append(Note((start + s.bars * 16 - 16) * step, 16 * step, 3, 60, 110))


def structure_song(preset: str, seed: int, seconds: tuple[float, float]) -> compose.Song:
    """A composed song with a varied arrangement, section cues and ``ACTIVITY``'s stems."""
    p = dataclasses.replace(compose.get_preset(preset), activity=ACTIVITY)
    song = compose.compose(p, seed, seconds[1], plan=plan(seconds))
    add_cues(song, np.random.default_rng([seed, 2]))
    return song


def render_structure_song(preset: str, seed: int, seconds: tuple[float, float],
                          soundfont: Path) -> tuple[np.ndarray, dict]:
    """int16 mono audio at ``SAMPLERATE`` and the song's annotation (the trainer's format)."""
    song = structure_song(preset, seed, seconds)
    duration = song.bars * 4 * song.beat_seconds
    n = int(round(duration * SAMPLERATE))
    mix = np.zeros(n, dtype=np.float32)
    for stem in song.stems.values():
        audio = synth.render(stem.notes, stem.channels, n, SAMPLERATE, soundfont)
        mix += audio.mean(axis=0) * np.float32(10 ** (stem.gain_db / 20))
    target = np.random.default_rng([seed, 3]).uniform(0.45, 0.9)
    pcm = np.round(mix * (target / max(float(np.abs(mix).max()), 1e-6)) * 32767).astype(np.int16)
    notes = render.annotations(song, duration)
    notes["metadata"] = {"tier": 1, "confidence": 1.0, **notes["metadata"]}
    return pcm, notes


def corpus_spec(preset: str, songs: int, seconds: tuple[float, float], seed: int, valid: int,
                soundfont: Path) -> dict:
    return {"kind": "structure", "preset": preset, "songs": songs, "seconds": [float(s) for s in seconds],
            "seed": seed, "valid": valid, "samplerate": SAMPLERATE, "version": VERSION, **synth.identity(soundfont)}


def render_corpus(out: Path, preset: str, songs: int, seconds: tuple[float, float], seed: int = 0,
                  valid: int | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """``songs`` songs as ``out/{train,valid}/<name>.{flac,yaml}``, written to a temporary folder
    and renamed (never half a corpus); an existing corpus with the same spec is reused."""
    compose.get_preset(preset)
    lo, hi = seconds
    if not 10 <= lo <= hi:
        raise RankhouseError(f"seconds {lo:g}-{hi:g}: need 10 <= shortest <= longest")
    valid = max(1, songs // 5) if valid is None else valid
    if songs < 2 or not 1 <= valid < songs:
        raise RankhouseError(f"songs {songs}, valid {valid}: need at least one song in each split")
    soundfont = synth.find_soundfont()
    spec = corpus_spec(preset, songs, seconds, seed, valid, soundfont)
    out = Path(out).resolve()

    def write_song(folder: Path, i: int) -> None:
        split = folder / ("valid" if i >= songs - valid else "train")
        pcm, notes = render_structure_song(preset, render.song_seed(seed, i), seconds, soundfont)
        name = f"{preset}-{seed}-{i:04d}"
        split.mkdir(parents=True, exist_ok=True)
        sf.write(split / f"{name}.flac", pcm, SAMPLERATE, subtype="PCM_16")
        notes["audio"]["file"] = f"{name}.flac"
        (split / f"{name}.yaml").write_text(yaml.safe_dump(notes, sort_keys=False))

    return render.write_corpus(out, spec, songs, write_song, progress)

def embedded_corpus(section: dict, progress: Callable[[int, int], None] | None = None) -> Path:
    """The structure corpus ``data.embedded`` describes, under rankhouse's cache home."""
    renderer = synth.identity(synth.find_soundfont())
    lo, hi = section["seconds"]
    name = (f"structure-{section['preset']}-seed{section['seed']}-{section['songs']}x{lo:g}-{hi:g}s"
            + (f"-valid{section['valid']}" if section.get("valid") else "")
            + f"-{renderer['soundfont_sha256'][:8]}-fs{renderer['fluidsynth']}-v{VERSION}")
    out = render.home() / "corpora" / name
    if not (out / render.MANIFEST).is_file():
        print(f"rendering the embedded structure corpus ({section['songs']} {section['preset']} songs of "
              f"{lo:g}-{hi:g} s) into {out}")
    return render_corpus(out, section["preset"], section["songs"], (lo, hi), section["seed"],
                         section.get("valid"), progress)


assert set(ACTIVITY) == set(LABELS)
