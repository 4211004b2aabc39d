"""Training batches and validation tracks from a StemCache, for a model's configured sources.

Training segments use the augmentations Demucs trains with: per-source gain (0.25-1.25),
channel swap, sign flip, and remixing (each source from an independently chosen track and
offset). The mixture of a training example is the sum of its sources. All randomness comes
from a seeded generator, so a trial is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainables.data.cache import StemCache
from trainables.data.layout import MIXTURE, Sources
from trainables.errors import RankhouseError


@dataclass
class Augment:
    gain: tuple[float, float] = (0.25, 1.25)
    swap_channels: float = 0.5
    flip_sign: float = 0.5
    remix: float = 0.5  # probability that a source comes from another track

    @classmethod
    def off(cls) -> "Augment":
        return cls(gain=(1.0, 1.0), swap_channels=0.0, flip_sign=0.0, remix=0.0)


def source_audio(cache: StemCache, index: int, stems: list[str], start: int = 0, stop: int | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """The sum of ``stems`` of a track, written into ``out`` (a new array if None): never a view
    of the read-only cache."""
    for i, stem in enumerate(stems):
        x = cache.track(index, stem)[:, start:stop]
        if out is None:
            out = np.array(x, dtype=np.float32)
        elif i == 0:
            np.copyto(out, x)
        else:
            out += x
    return out


class SegmentSampler:
    def __init__(self, cache: StemCache, sources: Sources, segment_frames: int, seed: int,
                 augment: Augment | None = None):
        self.cache, self.sources, self.segment = cache, sources, int(segment_frames)
        self.augment = augment or Augment()
        self.rng = np.random.default_rng(seed)
        self.usable = [i for i, n in enumerate(cache.frames) if n >= self.segment]
        if not self.usable:
            raise RankhouseError(f"{cache.path}: no track is as long as one segment "
                                 f"({self.segment} samples); use a shorter segment or longer tracks")

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(mixture (B, C, T), sources (B, S, C, T)) float32."""
        a, rng = self.augment, self.rng
        targets = np.empty((batch_size, len(self.sources), 2, self.segment), dtype=np.float32)
        for b in range(batch_size):
            track = int(rng.choice(self.usable))
            offset = int(rng.integers(0, self.cache.frames[track] - self.segment + 1))
            for s, stems in enumerate(self.sources.values()):
                t, o = track, offset
                if rng.random() < a.remix:
                    t = int(rng.choice(self.usable))
                    o = int(rng.integers(0, self.cache.frames[t] - self.segment + 1))
                x = source_audio(self.cache, t, stems, o, o + self.segment, out=targets[b, s])
                gain = rng.uniform(*a.gain)
                if rng.random() < a.flip_sign:
                    gain = -gain
                x *= gain
                if rng.random() < a.swap_channels:
                    x[:] = x[::-1].copy()
        return targets.sum(axis=1), targets


def validation_tracks(cache: StemCache, sources: Sources, max_seconds: float | None = None,
                      samplerate: int | None = None):
    """Yield (name, mixture (C, T), sources (S, C, T)) for every valid track (optionally truncated)."""
    for i, name in enumerate(cache.names):
        stop = int(max_seconds * samplerate) if max_seconds and samplerate else None
        mix = np.array(cache.track(i, MIXTURE)[:, :stop], dtype=np.float32)
        refs = np.stack([source_audio(cache, i, stems, 0, stop) for stems in sources.values()])
        yield name, mix, refs
