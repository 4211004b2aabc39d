"""Compose a song as MIDI notes per stem, from a preset and a seed.

A preset is a genre's vocabulary (tempo range, kits, programs, patterns); a seed picks tempo,
key, swing, arrangement, kits, programs, velocities and stem gains. Everything random comes
from one ``numpy.random.Generator``, so a seed fully determines the song.

Stems follow the 5-stem tech-house layout of the user's trainer: ``kick`` (all drums except
hi-hats), ``hihat``, ``bass``, ``other`` (chords, pads, stabs; the clap in tech-house),
``vocals`` (GM voice programs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainables.data.synth import DRUM_BANK, DRUM_CHANNEL, Channel, Note
from trainables.errors import RankhouseError

STEMS = ("kick", "hihat", "bass", "other", "vocals")
LABELS = ("intro", "buildup", "drop", "breakdown", "outro")

# GM drum keys
KICK, KICK2, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, RIDE, LOW_TOM, HI_TOM = 36, 35, 38, 39, 42, 44, 46, 51, 45, 50
MINOR = (0, 2, 3, 5, 7, 8, 10)
MAJOR = (0, 2, 4, 5, 7, 9, 11)


@dataclass(frozen=True)
class Preset:
    name: str
    bpm: tuple[float, float]
    scale: tuple[int, ...]
    kits: tuple[int, ...]  # GM drum-kit programs (bank 128)
    bass: tuple[int, ...]
    chords: tuple[int, ...]
    voices: tuple[int, ...]
    progressions: tuple[tuple[int, ...], ...]  # scale degrees, one chord per bar
    arrangement: tuple[tuple[str, float], ...]  # (label, relative length); dropped from the end of PRIORITY first
    # which stems play in each section
    activity: dict[str, tuple[str, ...]] = field(default_factory=dict)


TECHHOUSE = Preset(
    name="techhouse",
    bpm=(122.0, 130.0),
    scale=MINOR,
    kits=(25, 24, 0, 16),  # TR-808, Electronic, Standard, Power
    bass=(38, 39, 87, 33, 81),  # Synth Bass 1/2, Bass+Lead, Finger, Saw
    chords=(17, 4, 80, 81, 89, 90, 62, 50, 16),  # perc. organ, EP, square, saw, warm pad, polysynth, synth brass, synth strings, organ
    voices=(52, 53, 54, 85),  # Choir Aahs, Voice Oohs, Synth Voice, Lead 6 (voice)
    progressions=((0, 0, 5, 3), (0, 5, 3, 4), (0, 3, 4, 0), (0, 6, 5, 6), (0, 0, 3, 3)),
    arrangement=(("intro", 2), ("buildup", 1), ("drop", 4), ("breakdown", 2), ("drop", 4), ("outro", 2)),
    activity={
        "intro": ("kick", "hihat", "bass", "other"),
        "buildup": ("hihat", "other", "vocals", "kick"),
        "drop": STEMS,
        "breakdown": ("hihat", "other", "vocals", "bass"),
        "outro": ("kick", "hihat", "bass", "other"),
    },
)

GENERIC = Preset(
    name="generic",
    bpm=(90.0, 120.0),
    scale=MAJOR,
    kits=(0, 8, 32, 40, 16),  # Standard, Room, Jazz, Brush, Power
    bass=(32, 33, 34, 35),  # acoustic, finger, pick, fretless
    chords=(0, 1, 24, 25, 27, 29, 30, 48, 16, 19),  # pianos, guitars, strings, organs
    voices=(52, 53, 54),
    progressions=((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 0, 4), (5, 3, 0, 4)),
    arrangement=(("intro", 1), ("breakdown", 3), ("drop", 3), ("breakdown", 3), ("drop", 3), ("outro", 1)),
    activity={
        "intro": ("kick", "hihat", "bass", "other"),
        "buildup": STEMS,
        "drop": STEMS,
        "breakdown": STEMS,
        "outro": ("kick", "hihat", "bass", "other", "vocals"),
    },
)

PRESETS = {p.name: p for p in (TECHHOUSE, GENERIC)}
# sections dropped first when a short song cannot hold the whole arrangement
PRIORITY = ("drop", "breakdown", "buildup", "intro", "outro")


@dataclass
class Section:
    label: str
    bar: int  # first bar, 0-based
    bars: int


@dataclass
class Stem:
    channels: list[Channel]
    notes: list[Note]
    gain_db: float


@dataclass
class Song:
    preset: str
    seed: int
    bpm: float
    key: int
    swing: float
    bars: int
    sections: list[Section]
    stems: dict[str, Stem]

    @property
    def beat_seconds(self) -> float:
        return 60.0 / self.bpm


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise RankhouseError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def arrange(n_bars: int, preset: Preset) -> list[Section]:
    """Fit the preset's arrangement into ``n_bars``, keeping the most important sections."""
    template = list(preset.arrangement)
    while len(template) > n_bars:
        # drop the least important label, from the end
        worst = max(range(len(template)), key=lambda i: (PRIORITY.index(template[i][0]), i))
        template.pop(worst)
    weights = np.array([w for _, w in template], dtype=float)
    extra = n_bars - len(template)
    share = weights / weights.sum() * extra
    bars = 1 + np.floor(share).astype(int)
    for i in np.argsort(-(share - np.floor(share)), kind="stable")[: n_bars - int(bars.sum())]:
        bars[i] += 1
    sections, bar = [], 0
    for (label, _), n in zip(template, bars):
        sections.append(Section(label, bar, int(n)))
        bar += int(n)
    return sections


def compose(preset: Preset, seed: int, seconds: float, plan=None) -> Song:
    """A song of ``seconds`` in the preset's arrangement, or in ``plan(bpm, rng)``'s sections
    (the structure corpus' varied arrangements); the random draws before and after the
    arrangement are the same either way."""
    rng = np.random.default_rng(seed)
    bpm = float(np.round(rng.uniform(*preset.bpm), 1))
    beat = 60.0 / bpm
    n_bars = int(np.ceil(seconds / (4 * beat)))
    key = int(rng.integers(0, 12))
    swing = float(rng.uniform(0.0, 0.2))
    if plan is None:
        sections = arrange(n_bars, preset)
    else:
        sections = plan(bpm, np.random.default_rng([seed, 1]))
        n_bars = sum(s.bars for s in sections)
    progression = preset.progressions[rng.integers(len(preset.progressions))]
    step = beat / 4

    def at(bar: int, s: int) -> float:
        """Time of 16th-step ``s`` of ``bar``; odd 16ths are late by the swing amount."""
        return (bar * 16 + s) * step + (swing * step if s % 2 else 0.0)

    def chord_root(bar: int) -> int:
        degree = progression[bar % len(progression)]
        return key + preset.scale[degree % 7] + 12 * (degree // 7)

    def chord(bar: int) -> list[int]:
        degree = progression[bar % len(progression)]
        return [key + preset.scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4, 6)]

    def vel(base: int, spread: int = 12) -> int:
        return int(np.clip(base + rng.integers(-spread, spread + 1), 1, 127))

    def active(stem: str) -> list[int]:
        return [s.bar + b for s in sections if stem in preset.activity[s.label] for b in range(s.bars)]

    house = preset.name == "techhouse"
    kit = int(rng.choice(preset.kits))
    drum = lambda: Channel(DRUM_CHANNEL, DRUM_BANK, kit, pan=int(rng.integers(52, 77)), reverb=int(rng.integers(0, 30)))
    stems: dict[str, Stem] = {}

    # kick: four on the floor (tech-house) or kick + snare backbeat (generic)
    notes = []
    kick_key = int(rng.choice((KICK, KICK2)))
    for bar in active("kick"):
        if house:
            notes += [Note(at(bar, s), step, DRUM_CHANNEL, kick_key, vel(118, 6)) for s in (0, 4, 8, 12)]
        else:
            kicks = [0, 8] + ([10] if rng.random() < 0.5 else []) + ([6] if rng.random() < 0.3 else [])
            notes += [Note(at(bar, s), step, DRUM_CHANNEL, kick_key, vel(108)) for s in kicks]
            notes += [Note(at(bar, s), step, DRUM_CHANNEL, SNARE, vel(100)) for s in (4, 12)]
            if bar % 4 == 3 and rng.random() < 0.5:  # a fill into the next phrase
                notes += [Note(at(bar, s), step, DRUM_CHANNEL, int(rng.choice((LOW_TOM, HI_TOM))), vel(90)) for s in (13, 14, 15)]
    stems["kick"] = Stem([drum()], notes, float(rng.uniform(-3, 0)))

    # hihat: closed 16ths (tech-house) or 8ths (generic) with accents; offbeat open hats
    notes = []
    density = rng.uniform(0.6, 1.0)
    open_offbeats = rng.random() < 0.8
    ride = (not house) and rng.random() < 0.3
    for bar in active("hihat"):
        for s in range(16):
            if not house and s % 2:
                continue
            if house and open_offbeats and s % 4 == 2:
                notes.append(Note(at(bar, s), 2 * step, DRUM_CHANNEL, OPEN_HAT, vel(100)))
            elif rng.random() < density:
                accent = 95 if s % 4 == 2 else (80 if s % 2 == 0 else 65)
                notes.append(Note(at(bar, s), step / 2, DRUM_CHANNEL, RIDE if ride else CLOSED_HAT, vel(accent, 10)))
    stems["hihat"] = Stem([drum()], notes, float(rng.uniform(-3, 0)))

    # bass: a rolling 16-step pattern (tech-house) or roots on 8ths (generic)
    notes = []
    if house:
        pattern = [s for s in range(16) if s % 4 != 0 and rng.random() < 0.6] or [2, 6, 10, 14]
    else:
        pattern = [s for s in range(0, 16, 2) if s == 0 or rng.random() < 0.6]
    octave_jumps = {s for s in pattern if rng.random() < 0.25}
    for bar in active("bass"):
        root = 36 + (chord_root(bar) % 12)
        for s in pattern:
            key_ = root + (12 if s in octave_jumps else 0)
            notes.append(Note(at(bar, s), step * (0.8 if house else 1.8), 0, key_, vel(100)))
    stems["bass"] = Stem([Channel(0, 0, int(rng.choice(preset.bass)), pan=64, reverb=int(rng.integers(0, 15)))],
                         notes, float(rng.uniform(-4, 0)))

    # other: chord stabs / pads / comping (+ the clap in tech-house)
    notes = []
    program = int(rng.choice(preset.chords))
    pad = rng.random() < 0.35
    stabs = sorted({int(s) for s in rng.choice(16, size=int(rng.integers(2, 6)), replace=False)})
    for bar in active("other"):
        voicing = [60 + (n - key) % 12 + key - 12 * ((60 + key) >= 66) for n in chord(bar)]
        if pad:
            notes += [Note(at(bar, 0), 16 * step * 0.98, 0, n, vel(80)) for n in voicing]
        elif house:
            notes += [Note(at(bar, s), step * 1.5, 0, n, vel(95)) for s in stabs for n in voicing[:3]]
        else:
            notes += [Note(at(bar, s), step * 3.5, 0, n, vel(85)) for s in (0, 4, 8, 12) for n in voicing[:3]]
    channels = [Channel(0, 0, program, pan=int(rng.integers(40, 89)), reverb=int(rng.integers(30, 80)))]
    if house:
        channels.append(Channel(1, DRUM_BANK, kit, pan=64, reverb=int(rng.integers(20, 60))))
        for bar in active("kick") + [b for s in sections if s.label == "breakdown" for b in range(s.bar, s.bar + s.bars)]:
            notes += [Note(at(bar, s), step, 1, CLAP, vel(105)) for s in (4, 12)]
    stems["other"] = Stem(channels, notes, float(rng.uniform(-6, -1)))

    # vocals: a two-bar phrase on the scale, repeated with small variations
    notes = []
    pentatonic = [p for p in (0, 2, 3, 4, 7, 9, 10) if p in preset.scale][:5]
    phrase = []
    s = int(rng.integers(0, 4))
    while s < 32:
        length = int(rng.choice((2, 3, 4, 6)))
        phrase.append((s, length, 60 + key % 12 + int(rng.choice(pentatonic)) + 12 * int(rng.random() < 0.2)))
        s += length + int(rng.choice((0, 1, 2, 4)))
    for bar in active("vocals"):
        for start, length, key_ in phrase:
            if start // 16 == bar % 2:
                jitter = int(rng.choice((0, 0, 0, 2, -1))) if rng.random() < 0.2 else 0
                notes.append(Note(at(bar, start % 16), step * length * 0.95, 0, key_ + jitter, vel(92)))
    stems["vocals"] = Stem([Channel(0, 0, int(rng.choice(preset.voices)), pan=int(rng.integers(56, 73)),
                                    reverb=int(rng.integers(40, 90)))], notes, float(rng.uniform(-5, 0)))
    return Song(preset.name, seed, bpm, key, swing, n_bars, sections, stems)
