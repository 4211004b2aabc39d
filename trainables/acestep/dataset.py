"""Converted datasets as latent clips: songs decoded once into the base's latent (the mel latent
or an ACE-Step folder's VAE; cached), the split, training crops and the fixed validation clips.

The split: a dataset is one converted folder, as ACE-Step's trainer reads it. A song is in the
valid split when its key's CRC-32 ranks among the lowest ``valid`` share of the keys: the same
songs whatever order the rows were written in, and whatever ``--repeat`` was.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from trainables.acestep import convert, flow
from trainables.data import audio as audio_io
from trainables.data import cache


@dataclass
class Song:
    key: str
    tags: list[str]
    prompt: np.ndarray  # the tags as the model reads them (``model.prompt``): word tokens or a condition
    latent: np.ndarray  # (frames, channels) float32


def split_keys(keys: list[str], valid: float) -> dict[str, list[str]]:
    ranked = sorted(set(keys), key=lambda k: (zlib.crc32(k.encode()), k))
    n = len(ranked) if valid >= 1 else max(1, int(round(valid * len(ranked))))
    chosen = set(ranked[:n])
    return {"valid": sorted(chosen), "train": sorted(k for k in ranked if k not in chosen)}


def encode_cached(path: Path, latent, cache_dir: Path) -> np.ndarray:
    """The file's latent, computed once into ``cache_dir`` (``cache.per_file``) and memory-mapped after."""
    encode = lambda p: latent.encode(audio_io.read(p, latent.samplerate, channels=None))
    return cache.per_file(path, str(sorted(latent.spec.items())), Path(cache_dir) / "acestep", encode)


def open_split(root: Path, split: str, valid: float, latent, prompt: Callable[[list[str]], np.ndarray],
               cache_dir: Path, progress=None) -> list[Song]:
    """The split's songs: their latents (cached) and their prompts, padded with zero rows to one
    length so that they batch (a zero row is padding to either model)."""
    rows = {r["keys"]: r for r in convert.load(root)}
    keys = split_keys(list(rows), valid)[split]
    songs = []
    for i, key in enumerate(keys):
        row = rows[key]
        songs.append(Song(key, list(row["tags"]), prompt(list(row["tags"])),
                          encode_cached(Path(row["filename"]), latent, cache_dir)))
        if progress:
            progress(i + 1, len(keys))
    longest = max((len(s.prompt) for s in songs), default=0)
    for s in songs:
        s.prompt = np.concatenate([s.prompt, np.zeros((longest - len(s.prompt), *s.prompt.shape[1:]), s.prompt.dtype)])
    return songs


def window(song: Song, start: int, frames: int, pad: float) -> np.ndarray:
    part = np.asarray(song.latent[start:start + frames], dtype=np.float32)
    if len(part) < frames:
        part = np.concatenate([part, np.full((frames - len(part), part.shape[1]), pad, np.float32)])
    return part


def valid_clips(songs: list[Song], frames: int, pad: float) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """Every song's non-overlapping windows of ``frames`` (at least one): ``(key, index, latent, prompt)``."""
    out = []
    for song in songs:
        for i in range(max(1, len(song.latent) // frames)):
            out.append((song.key, i, window(song, i * frames, frames, pad), song.prompt))
    return out


class Crops:
    """Random training crops and everything random about a step, from one checkpointed
    generator: the crop, the noise level (``flow.train_sigmas``' density), the noise, and
    whether the prompt is dropped (``cond_dropout``, the trainer's 15% for classifier-free
    guidance). ``shuffled``: each song's tags are another song's (a control: the model cannot
    learn what the tags mean)."""

    def __init__(self, songs: list[Song], frames: int, pad: float, shift: float, cond_dropout: float, seed: int,
                 shuffled: bool = False):
        self.songs, self.frames, self.pad, self.shift, self.dropout = songs, frames, pad, shift, cond_dropout
        lengths = np.array([max(1, len(s.latent)) for s in songs], dtype=float)
        self.weights = lengths / lengths.sum()
        self.prompts = [s.prompt for s in songs]
        if shuffled:  # a cycle through a random order: no song keeps its own tags
            order = np.random.default_rng([seed, 7]).permutation(len(songs))
            for k, i in enumerate(order):
                self.prompts[i] = songs[order[(k + 1) % len(songs)]].prompt
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple:
        clean, prompts = [], []
        for _ in range(batch_size):
            i = int(self.rng.choice(len(self.songs), p=self.weights))
            start = int(self.rng.integers(0, max(1, len(self.songs[i].latent) - self.frames + 1)))
            clean.append(window(self.songs[i], start, self.frames, self.pad))
            prompts.append(self.prompts[i] if self.rng.random() >= self.dropout else np.zeros_like(self.prompts[i]))
        sigma = flow.train_sigmas(self.rng.standard_normal(batch_size), self.shift)
        noise = self.rng.standard_normal((batch_size, self.frames, clean[0].shape[1])).astype(np.float32)
        return np.stack(clean), np.stack(prompts), sigma, noise

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
