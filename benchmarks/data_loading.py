"""How fast training segments come out of the Arrow cache, against decoding WAV/FLAC per item,
and how much memory the memory-mapped cache costs when several processes read it.

    .venv/bin/python -m benchmarks.data_loading [--songs 8] [--seconds 30] [--segments 200] [--out DIR]

It renders its own corpus (trainables.data.render.render_corpus), builds the 44.1 kHz cache of
the train split, converts the corpus to FLAC, then draws the same N random (track, offset)
3-second stereo 5-stem segments from each store:

(a) the cache: zero-copy slices of the memory map, copied into one float32 (S, 2, T) array;
(a') the same through SegmentSampler.sample with Augment.off() (the trainer's code path);
(b) WAV: one soundfile.read(start, stop) per stem file and item;
(c) FLAC: the same on the FLAC copy (decoding from the nearest seek point).

Every store was just written, so all of them are read from the OS page cache (warm); the
comparison is decode + copy cost, not disk speed. Then two subprocesses memory-map the same
cache and touch every page; their /proc/<pid>/smaps_rollup (and the cache file's own mapping
in /proc/<pid>/smaps) show the decoded audio is held once, in shared page cache.

Prints one markdown report to stdout.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, so the stdlib ``platform`` keeps its name

from trainables.data import cache, compose, render  # noqa: E402
from trainables.data.layout import find_file, normalize_sources, tracks  # noqa: E402
from trainables.data.segments import Augment, SegmentSampler  # noqa: E402

SR = render.SAMPLERATE
STEMS = list(compose.STEMS)
SEGMENT_SECONDS = 3.0
MODEL_SR = 22050  # the embedded base's rate: what a loader without the cache must resample to

# Runs in each memory subprocess: map the cache, sum every sample (touching every page), report, wait.
TOUCH = r"""
import sys
import numpy as np
from trainables.data.cache import StemCache
c = StemCache(sys.argv[1])
total = 0.0
for i in range(len(c)):
    for stem in ["mixture", *c.stems]:
        total += float(c.track(i, stem).sum(dtype=np.float64))
print(f"ready {total!r}", flush=True)
sys.stdin.readline()  # hold the mapping until the parent has read /proc
"""


def to_flac(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*.wav")):
        out = dst / path.relative_to(src).with_suffix(".flac")
        out.parent.mkdir(parents=True, exist_ok=True)
        data, sr = sf.read(str(path), dtype="int16")
        sf.write(str(out), data, sr, format="FLAC", subtype="PCM_16")


def draw(frames: list[int], n: int, seg: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(len(frames)))
        out.append((t, int(rng.integers(0, frames[t] - seg + 1))))
    return out


def from_cache(c: cache.StemCache, items, seg: int) -> np.ndarray:
    out = np.empty((len(STEMS), 2, seg), dtype=np.float32)
    for t, o in items:
        for s, stem in enumerate(STEMS):
            out[s] = c.track(t, stem)[:, o:o + seg]
    return out


def from_files(files: list[dict[str, Path]], items, seg: int) -> np.ndarray:
    out = np.empty((len(STEMS), 2, seg), dtype=np.float32)
    for t, o in items:
        for s, stem in enumerate(STEMS):
            data, _ = sf.read(str(files[t][stem]), start=o, stop=o + seg, dtype="float32", always_2d=True)
            out[s] = data.T
    return out


def from_files_resampled(files: list[dict[str, Path]], items, seg: int) -> np.ndarray:
    """What a trainer without the cache does per item when the model's rate differs from the files'."""
    from trainables.data.audio import resample

    out = np.empty((len(STEMS), 2, seg * MODEL_SR // SR), dtype=np.float32)
    for t, o in items:
        for s, stem in enumerate(STEMS):
            data, _ = sf.read(str(files[t][stem]), start=o, stop=o + seg, dtype="float32", always_2d=True)
            out[s] = resample(data.T, SR, MODEL_SR)
    return out


def timed(fn, store, items, seg: int) -> float:
    fn(store, items[:5], seg)  # warm up: imports, first reads
    t0 = time.perf_counter()
    fn(store, items, seg)
    return time.perf_counter() - t0


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])  # kB
    return out


def file_mapping(pid: int, path: Path) -> dict[str, int]:
    """Sum of /proc/<pid>/smaps fields over the mappings of ``path``."""
    out: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            inside = len(head) == 6 and head[5] == str(path)
        elif inside and line.endswith(" kB"):
            key, value = line.split(":", 1)
            out[key] = out.get(key, 0) + int(value.split()[0])
    return out


def memory(path: Path) -> list[tuple[int, dict, dict]]:
    procs = [subprocess.Popen([sys.executable, "-c", TOUCH, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        sums = [p.stdout.readline().split() for p in procs]
        if any(not s or s[0] != "ready" for s in sums):
            raise SystemExit(f"memory subprocess failed: {sums}")
        if sums[0][1] != sums[1][1]:
            raise SystemExit(f"the two processes read different audio: {sums}")
        return [(p.pid, smaps_rollup(p.pid), file_mapping(p.pid, path)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.flush()
            p.wait(timeout=60)


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--songs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--segments", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir, removed afterwards)")
    args = ap.parse_args()
    seg = int(SEGMENT_SECONDS * SR)
    if args.seconds < SEGMENT_SECONDS:
        raise SystemExit(f"--seconds {args.seconds}: songs must be at least {SEGMENT_SECONDS:g} s long")

    work = args.out or Path(tempfile.mkdtemp(prefix="rankhouse-bench-"))
    try:
        t0 = time.perf_counter()
        corpus = render.render_corpus(work / "corpus", "techhouse", args.songs, args.seconds, seed=args.seed)
        t_render = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = cache.build(corpus, "train", STEMS, SR, cache_dir=work / "cache")
        t_cache = time.perf_counter() - t0
        t0 = time.perf_counter()
        flac = work / "flac"
        if not flac.exists():
            to_flac(corpus, flac)
        t_flac = time.perf_counter() - t0

        c = cache.StemCache(path)
        names = [t.name for t in tracks(corpus, "train")]
        assert names == c.names, (names, c.names)
        wav_files = [{s: find_file(corpus / "train" / n, s) for s in STEMS} for n in names]
        flac_files = [{s: find_file(flac / "train" / n, s) for s in STEMS} for n in names]
        assert all(f.suffix == ".flac" for d in flac_files for f in d.values())
        items = draw(c.frames, args.segments, seg, args.seed)

        # the three stores hold the same samples
        for t, o in items[:3]:
            a = from_cache(c, [(t, o)], seg)
            np.testing.assert_array_equal(a, from_files(wav_files, [(t, o)], seg))
            np.testing.assert_array_equal(a, from_files(flac_files, [(t, o)], seg))

        n = len(items)
        times = {
            "(a) Arrow cache, memory-mapped slices": timed(from_cache, c, items, seg),
            "(b) WAV, soundfile.read(start, stop) per stem": timed(from_files, wav_files, items, seg),
            "(c) FLAC, soundfile.read(start, stop) per stem": timed(from_files, flac_files, items, seg),
        }
        c22 = cache.StemCache(cache.build(corpus, "train", STEMS, MODEL_SR, cache_dir=work / "cache"))
        seg22 = int(SEGMENT_SECONDS * MODEL_SR)
        at_model_rate = {
            f"(d) Arrow cache at {MODEL_SR} Hz (the model's rate)":
                timed(from_cache, c22, [(t, o * MODEL_SR // SR) for t, o in items], seg22),
            f"(e) WAV + soxr resample to {MODEL_SR} Hz per stem": timed(from_files_resampled, wav_files, items, seg),
        }
        del c22
        sampler = SegmentSampler(c, normalize_sources(STEMS), seg, seed=args.seed, augment=Augment.off())
        sampler.sample(2)
        t0 = time.perf_counter()
        for _ in range(n // 8):
            sampler.sample(8)
        sampler.sample(n % 8) if n % 8 else None
        times["(a') SegmentSampler.sample(8), Augment.off()"] = time.perf_counter() - t0

        n_train = len(c)
        del c, sampler  # unmap the cache in this process: only the two children map it below
        gc.collect()
        os.sync()  # write the fresh cache back, so its page-cache pages count as clean
        procs = memory(path)
        size = path.stat().st_size
        wav_bytes = sum(f.stat().st_size for d in wav_files for f in d.values())
        flac_bytes = sum(f.stat().st_size for d in flac_files for f in d.values())
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    rate = {k: n / v for k, v in times.items()}
    a = rate["(a) Arrow cache, memory-mapped slices"]
    print(f"## Data loading: {n} random {SEGMENT_SECONDS:g}-s stereo {len(STEMS)}-stem segments at {SR} Hz\n")
    print(f"corpus: techhouse, {args.songs} songs x {args.seconds:g} s (train: {n_train} tracks), "
          f"render {t_render:.1f} s, cache build {t_cache:.1f} s, FLAC conversion {t_flac:.1f} s; "
          "all stores warm in the OS page cache\n")
    print("| source | segments/s | ms/segment | vs cache |")
    print("|---|---:|---:|---:|")
    for k, r in rate.items():
        print(f"| {k} | {r:,.0f} | {1000 / r:.2f} | {a / r:.1f}x |")
    print(f"\nAt the model's rate ({MODEL_SR} Hz; files are {SR} Hz):\n")
    print("| source | segments/s | ms/segment | vs cache |")
    print("|---|---:|---:|---:|")
    d = n / next(iter(at_model_rate.values()))
    for k, v in at_model_rate.items():
        print(f"| {k} | {n / v:,.0f} | {1000 * v / n:.2f} | {d / (n / v):.1f}x |")
    print()
    print(f"cache/(WAV + resample) = **{d / (n / list(at_model_rate.values())[1]):.1f}x**, cache/WAV = **{a / rate['(b) WAV, soundfile.read(start, stop) per stem']:.1f}x**, "
          f"cache/FLAC = **{a / rate['(c) FLAC, soundfile.read(start, stop) per stem']:.1f}x**\n")
    print(f"train split on disk: WAV {wav_bytes / 2**20:.1f} MiB, FLAC {flac_bytes / 2**20:.1f} MiB, "
          f"Arrow cache (float32, mixture + {len(STEMS)} stems) **{size / 2**20:.1f} MiB**\n")
    print("### Memory: two processes memory-map the same cache and sum every sample (MiB)\n")
    print("| process | Rss | Pss | Shared_Clean | Shared_Dirty | Private_Clean | Private_Dirty "
          "| cache mapping: Rss | Pss | Shared | Private |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (pid, roll, m) in enumerate(procs):
        shared = m.get("Shared_Clean", 0) + m.get("Shared_Dirty", 0)
        private = m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)
        print(f"| #{i + 1} (pid {pid}) | {mib(roll['Rss'])} | {mib(roll['Pss'])} | {mib(roll['Shared_Clean'])} | "
              f"{mib(roll['Shared_Dirty'])} | {mib(roll['Private_Clean'])} | {mib(roll['Private_Dirty'])} | "
              f"{mib(m.get('Rss', 0))} | {mib(m.get('Pss', 0))} | {mib(shared)} | {mib(private)} |")
    print(f"\ncache file: {size / 2**20:.1f} MiB. Each process's Rss includes the whole decoded split, but as "
          "shared page cache mapped by both (the cache mapping's Pss is half of its Rss); Private_Dirty is "
          "the interpreter, numpy and pyarrow heaps, not audio. Decoding per process instead would cost "
          f"{size / 2**20:.1f} MiB of private memory in each process.")


if __name__ == "__main__":
    main()
