"""Corpus rendering speed: seconds of stereo 44.1 kHz audio (5 stems + mixture) rendered per
second of wall time, on one core, per preset.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python -m benchmarks.render_speed --songs 4 --seconds 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.data import render, synth  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--songs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    soundfont = synth.find_soundfont()
    print(f"soundfont: {soundfont}\n")
    print("| preset | songs | audio (s) | wall (s) | x real time |")
    print("|---|---:|---:|---:|---:|")
    for preset in ("techhouse", "generic"):
        started = time.perf_counter()
        for i in range(args.songs):
            render.render_song(preset, render.song_seed(0, i), args.seconds, soundfont)
        wall = time.perf_counter() - started
        audio = args.songs * args.seconds
        print(f"| {preset} | {args.songs} | {audio:.0f} | {wall:.1f} | {audio / wall:.1f}x |")


if __name__ == "__main__":
    main()
