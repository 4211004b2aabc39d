"""Structure tracks at a model's rate: decoded audio (cached), frame-wise targets, training crops.

Frame ``i`` of a track covers samples ``[i * hop, (i + 1) * hop)`` at the model's sample rate;
a model emits ``n_samples // hop`` frames. Targets per frame:

- ``boundary``, ``beat``, ``downbeat``: 1 on the frame nearest each event, 0.5 on its two
  neighbours (target widening: a prediction one frame off is half right), else 0. Boundaries
  are the section changes inside the track (its start and end are not);
- ``label``: the index (``LABELS``) of the section the frame lies in;
- ``energy``: the mixture's energy in three bands (below 150 Hz, 150 Hz to 2 kHz, above),
  in dB relative to the track's loudest frame of that band, mapped from [-60, 0] dB to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.data import audio as audio_io
from trainables.data import cache
from trainables.data.compose import LABELS
from trainables.structure.annotations import Annotation, load, with_audio

BANDS = ((0.0, 150.0), (150.0, 2000.0), (2000.0, None))
ENERGY_RANGE_DB = 60.0
ENERGY_FFT = 2048


@dataclass
class Track:
    ann: Annotation
    audio: np.ndarray  # int16 mono at the model's rate (memory-mapped from the cache)
    targets: dict[str, np.ndarray]  # frame-wise; see the module docstring

    @property
    def frames(self) -> int:
        return len(self.targets["label"])


def decode(ann: Annotation, samplerate: int, cache_dir: Path) -> np.ndarray:
    """The track's audio, mono int16 at ``samplerate``, decoded once into ``cache_dir``
    (``cache.per_file``) and memory-mapped after."""

    def pcm(path: Path) -> np.ndarray:
        audio = audio_io.read(path, samplerate, channels=None).mean(axis=0)
        return np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)

    return cache.per_file(ann.audio, str(samplerate), Path(cache_dir) / "structure", pcm)


def events(times: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """1 at each event's nearest frame, 0.5 beside it."""
    out = np.zeros(frames, dtype=np.float32)
    idx = np.rint(np.asarray(times) * fps).astype(int)
    idx = idx[(idx >= 0) & (idx < frames)]
    for shift in (-1, 1):
        side = idx + shift
        side = side[(side >= 0) & (side < frames)]
        out[side] = np.maximum(out[side], 0.5)
    out[idx] = 1.0
    return out


def band_energy(audio: np.ndarray, samplerate: int, hop: int, frames: int) -> np.ndarray:
    """(frames, 3) energy targets of int16 or float mono audio; see the module docstring."""
    import librosa

    x = np.asarray(audio, dtype=np.float32) / (32768.0 if audio.dtype == np.int16 else 1.0)
    power = np.abs(librosa.stft(x, n_fft=ENERGY_FFT, hop_length=hop, center=True)) ** 2
    power = power[:, :frames]
    freqs = librosa.fft_frequencies(sr=samplerate, n_fft=ENERGY_FFT)
    out = np.zeros((frames, len(BANDS)), dtype=np.float32)
    for b, (lo, hi) in enumerate(BANDS):
        band = power[(freqs >= lo) & (freqs < (hi or np.inf))].sum(axis=0)
        db = 10 * np.log10(band + 1e-10)
        db -= db.max() if db.size else 0.0
        out[:band.size, b] = np.clip(1 + db / ENERGY_RANGE_DB, 0, 1)
    return out


def frame_targets(ann: Annotation, audio: np.ndarray, samplerate: int, hop: int) -> dict[str, np.ndarray]:
    frames = len(audio) // hop
    fps = samplerate / hop
    starts = np.rint(ann.times * fps).astype(int)
    label = np.zeros(frames, dtype=np.int64)
    for start, name in zip(starts, ann.labels):
        label[max(start, 0):] = LABELS.index(name)
    return {"boundary": events(ann.boundaries, frames, fps), "beat": events(ann.beats, frames, fps),
            "downbeat": events(ann.downbeats, frames, fps), "label": label,
            "energy": band_energy(audio, samplerate, hop, frames)}


def open_split(files: list[Path], samplerate: int, hop: int, audio_dir: Path | None, cache_dir: Path,
               progress=None) -> list[Track]:
    """Every track of a split, decoded and with its targets (the dataset was checked before)."""
    tracks = []
    for i, f in enumerate(files):
        ann = with_audio(load(f, audio_dir))
        audio = decode(ann, samplerate, cache_dir)
        tracks.append(Track(ann, audio, frame_targets(ann, audio, samplerate, hop)))
        if progress:
            progress(i + 1, len(files))
    return tracks


class Crops:
    """Random training crops of ``seconds``: a track drawn in proportion to its length, a start
    frame drawn uniformly. A track shorter than a crop is padded; ``mask`` marks its real frames."""

    def __init__(self, tracks: list[Track], seconds: float, samplerate: int, hop: int, seed: int):
        self.tracks, self.hop = tracks, hop
        self.frames = max(1, int(round(seconds * samplerate / hop)))
        lengths = np.array([t.frames for t in tracks], dtype=float)
        self.weights = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple:
        n, hop = self.frames, self.hop
        audio = np.zeros((batch_size, n * hop), dtype=np.float32)
        out = {k: np.zeros((batch_size, n) + v.shape[1:], dtype=v.dtype) for k, v in self.tracks[0].targets.items()}
        mask = np.zeros((batch_size, n), dtype=np.float32)
        for b in range(batch_size):
            track = self.tracks[self.rng.choice(len(self.tracks), p=self.weights)]
            start = int(self.rng.integers(0, max(1, track.frames - n + 1)))
            take = min(n, track.frames - start)
            audio[b, :take * hop] = track.audio[start * hop:(start + take) * hop] / 32768.0
            for k, v in track.targets.items():
                out[k][b, :take] = v[start:start + take]
            mask[b, :take] = 1.0
        return (audio, out["boundary"], out["beat"], out["downbeat"], out["energy"], out["label"], mask)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
