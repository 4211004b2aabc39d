"""A decoded, memory-mapped Arrow cache of a dataset split, shared by every trial on a node.

Each split is decoded once (resampled to the model's rate, stereo) into an Arrow IPC file: one
record batch per track, one float32 column per stem (channel-major). Readers memory-map the
file, so slices are zero-copy views and the OS page cache holds one copy of the audio for all
processes. The file name carries a hash of the source files' paths, sizes and mtimes and of the
sample rate: editing a stem invalidates it. A file lock makes concurrent trials build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from trainables.data import audio as audio_io
from trainables.data.layout import MIXTURE, find_file, tracks
from trainables.errors import RankhouseError

CACHE_VERSION = 1
CHANNELS = 2


def default_cache_dir(root: Path) -> Path:
    return Path(os.environ.get("RANKHOUSE_CACHE", Path(root) / ".rankhouse-cache"))


def per_file(source: Path, settings: str, folder: Path, compute: Callable[[Path], np.ndarray]) -> np.ndarray:
    """``compute(source)`` saved once as ``.npy`` in ``folder`` (keyed by the file's path, size
    and mtime and ``settings``; written to a temporary name and renamed) and memory-mapped after:
    one file's decoded audio or features, shared by every trial on a node."""
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{settings}".encode()).hexdigest()
    path = Path(folder) / f"{key[:20]}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
        np.save(tmp, compute(source))
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def _files(root: Path, split: str, stems: list[str]) -> list[tuple[str, dict[str, Path]]]:
    out = []
    for track in tracks(root, split):
        files = {}
        for name in [MIXTURE, *stems]:
            path = find_file(track, name)
            if path is None:
                raise RankhouseError(f"{split}/{track.name}: no {name} file; run python -m platform.data check {root}")
            files[name] = path
        out.append((track.name, files))
    if not out:
        raise RankhouseError(f"{Path(root) / split}: no tracks; run python -m platform.data check {root}")
    return out


def cache_identity(root: Path, stems: list[str], samplerate: int) -> str:
    """Which cache this is (dataset, stems, rate): other identities in the same folder are kept."""
    key = [CACHE_VERSION, str(Path(root).resolve()), samplerate, CHANNELS, sorted(stems)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


def cache_key(root: Path, split: str, stems: list[str], samplerate: int) -> str:
    """Identity plus the source files' content stamp: editing a file changes the key."""
    h = hashlib.sha256()
    for name, files in _files(root, split, stems):
        for stem in sorted(files):
            st = files[stem].stat()
            h.update(f"{name}/{files[stem].name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"{cache_identity(root, stems, samplerate)}-{h.hexdigest()[:12]}"


def build(root: Path, split: str, stems: list[str], samplerate: int, cache_dir: Path | None = None,
          progress=None) -> Path:
    """Path of the split's cache file, decoding the split first if no valid cache exists."""
    root = Path(root)
    stems = sorted(set(stems))
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(root)
    path = cache_dir / f"{split}-{samplerate}-{cache_key(root, split, stems, samplerate)}.arrow"
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{split}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another trial may be building the same file
        if path.is_file():
            return path
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        schema = pa.schema([("track", pa.string()), ("frames", pa.int64())] +
                           [(s, pa.large_list(pa.float32())) for s in [MIXTURE, *stems]])
        entries = _files(root, split, stems)
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for i, (name, files) in enumerate(entries):
                    arrays = {s: audio_io.read(files[s], samplerate, CHANNELS) for s in files}
                    frames = min(a.shape[1] for a in arrays.values())
                    cols = [pa.array([name]), pa.array([frames], pa.int64())]
                    cols += [pa.array([arrays[s][:, :frames].reshape(-1)], pa.large_list(pa.float32()))
                             for s in [MIXTURE, *stems]]
                    writer.write_batch(pa.record_batch(cols, schema=schema))
                    if progress:
                        progress(i + 1, len(entries))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        # superseded versions of this very cache (same dataset, stems and rate)
        for old in cache_dir.glob(f"{split}-{samplerate}-{cache_identity(root, stems, samplerate)}-*.arrow"):
            if old != path:
                old.unlink(missing_ok=True)
    return path


class StemCache:
    """Zero-copy read access to one cached split."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._source = pa.memory_map(str(self.path), "r")
        self._reader = pa.ipc.open_file(self._source)
        self.stems = [f.name for f in self._reader.schema if f.name not in ("track", "frames", MIXTURE)]
        self.names: list[str] = []
        self.frames: list[int] = []
        for i in range(self._reader.num_record_batches):
            batch = self._reader.get_batch(i)
            self.names.append(batch.column(0)[0].as_py())
            self.frames.append(batch.column(1)[0].as_py())

    def __len__(self) -> int:
        return len(self.names)

    def track(self, index: int, stem: str) -> np.ndarray:
        """(channels, frames) float32 view into the memory map (read-only)."""
        batch = self._reader.get_batch(index)
        values = batch.column(stem).values.to_numpy(zero_copy_only=True)
        return values.reshape(CHANNELS, self.frames[index])
