"""Render note events to float audio through FluidSynth (real recorded instrument samples).

Why these choices:
- pyfluidsynth only exposes dithered int16 output; ``fluid_synth_write_float`` through ctypes
  gives the undithered float signal, so stems can be scaled before quantisation.
- Chorus is off: with it on, several GM programs come out nearly phase-inverted between L
  and R (correlation about -0.7) and vanish in a mono sum.
- A fresh synth per stem, with dynamic sample loading (only the selected presets' samples
  are read, ~25 ms), makes each stem independent of what was rendered before it: the same
  events give the same bytes in any order and in any process.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.errors import RankhouseError

DEBIAN_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
DRUM_CHANNEL = 9
DRUM_BANK = 128


@dataclass(frozen=True)
class Note:
    time: float  # seconds
    duration: float  # seconds
    channel: int
    key: int
    velocity: int


@dataclass(frozen=True)
class Channel:
    """A MIDI channel's instrument and mix controls (bank 128 = GM drum kits)."""

    channel: int
    bank: int
    program: int
    pan: int = 64
    reverb: int = 30


def find_soundfont() -> Path:
    """FluidR3_GM from Debian's fluid-soundfont-gm; TimGM6mb from the pretty_midi wheel as fallback."""
    override = os.environ.get("RANKHOUSE_SOUNDFONT")
    if override:
        if not Path(override).is_file():
            raise RankhouseError(f"RANKHOUSE_SOUNDFONT={override}: no such file; point it at a .sf2 soundfont")
        return Path(override)
    if DEBIAN_SOUNDFONT.is_file():
        return DEBIAN_SOUNDFONT
    try:
        import pretty_midi

        fallback = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        if fallback.is_file():
            return fallback
    except ImportError:
        pass
    raise RankhouseError(
        "no General MIDI soundfont found: install Debian's fluid-soundfont-gm "
        "(sudo apt-get install fluid-soundfont-gm) or set RANKHOUSE_SOUNDFONT=/path/to/file.sf2"
    )


def identity(soundfont: Path) -> dict:
    """What decides the rendered bytes besides the notes: the soundfont's content and the
    FluidSynth library's version (FluidR3_GM and the TimGM6mb fallback give other audio for
    the same songs; so may another FluidSynth). A corpus is reused only when these match."""
    st = Path(soundfont).stat()
    fluidsynth, _ = _fluidsynth()
    major, minor, micro = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    fluidsynth.fluid_version(major, minor, micro)
    return {"soundfont": Path(soundfont).name, "soundfont_sha256": _sha256(str(soundfont), st.st_size, st.st_mtime_ns),
            "fluidsynth": f"{major.value}.{minor.value}.{micro.value}"}


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A soundfont's digest, once per process and file version (FluidR3_GM is 148 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fluidsynth():
    try:
        import fluidsynth
    except ImportError as exc:  # the shared library is missing, not the Python module
        raise RankhouseError(
            f"FluidSynth is not usable ({exc}): install it with sudo apt-get install libfluidsynth3"
        ) from None
    write_float = fluidsynth._fl.fluid_synth_write_float
    write_float.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                            ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return fluidsynth, write_float


def render(notes: list[Note], channels: list[Channel], n_samples: int, samplerate: int,
           soundfont: Path, gain: float = 0.4) -> np.ndarray:
    """Render ``notes`` to a float32 array of shape (2, n_samples)."""
    fluidsynth, write_float = _fluidsynth()
    synth = fluidsynth.Synth(gain=gain, samplerate=samplerate, **{
        "synth.chorus.active": 0,
        "synth.reverb.active": 1,
        "synth.cpu-cores": 1,
        "synth.dynamic-sample-loading": 1,
    })
    try:
        sfid = synth.sfload(str(soundfont))
        if sfid < 0:
            raise RankhouseError(f"{soundfont}: FluidSynth could not load this soundfont; reinstall it")
        for ch in channels:
            synth.program_select(ch.channel, sfid, ch.bank, ch.program)
            synth.cc(ch.channel, 10, ch.pan)
            synth.cc(ch.channel, 91, ch.reverb)
            synth.cc(ch.channel, 93, 0)  # chorus send: see module docstring
        events = []
        for n in notes:
            on = int(round(n.time * samplerate))
            if on >= n_samples:
                continue
            events.append((on, 1, n.channel, n.key, n.velocity))
            events.append((int(round((n.time + n.duration) * samplerate)), 0, n.channel, n.key, 0))
        events.sort()  # note-offs (0) before note-ons (1) at the same sample
        out = np.zeros((n_samples, 2), dtype=np.float32)
        base = out.ctypes.data
        pos = 0
        for at, is_on, chan, key, vel in events:
            at = min(at, n_samples)
            if at > pos:
                ptr = base + pos * 8
                write_float(synth.synth, at - pos, ptr, 0, 2, ptr, 1, 2)
                pos = at
            if is_on:
                synth.noteon(chan, key, vel)
            else:
                synth.noteoff(chan, key)
        if pos < n_samples:
            ptr = base + pos * 8
            write_float(synth.synth, n_samples - pos, ptr, 0, 2, ptr, 1, 2)
        return np.ascontiguousarray(out.T)
    finally:
        synth.delete()
