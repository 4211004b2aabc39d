"""``platform.analyze``'s speed and memory for each structure backbone, side by side in one
run, on one rendered 4-minute tech-house track (mono 22.05 kHz FLAC, resampled by the command):

  RTF      the audio's duration over the wall time of the analysis (decode, resample, model,
           peak picking, the YAML, beats and PNG written); above 1 is faster than real time
  peak RSS the process' peak resident memory (ru_maxrss), model and imports included

Each backbone runs in a fresh process, ``--repeat`` times in turns (the fastest counts):

- ``cnn (embedded)``: the embedded structure base with the best adapter of
  ``runs/structure_techhouse/summary.json`` (``python -m platform.tune
  search_spaces/structure_techhouse.yaml --json ...``), through the real CLI;
- ``mert (MERT-v1-95M shape)``: HuBERT with MERT-v1-95M's architecture (hidden 768, 12 layers,
  conv_dim 512), random weights (speed does not depend on them; no hub download), through the
  same analysis code;
- ``mert (tiny)``: the small MERT-shaped scratch backbone the tests use.

    .venv/bin/python -m benchmarks.analyze_speed          (from the repository root)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import child

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "runs/structure_techhouse/summary.json"
MERT_95M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "conv_dim": [512] * 7, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}


def one(backbone: str, track: Path, out: Path) -> None:
    """In this process: analyse ``track`` with ``backbone``; print wall seconds and peak RSS."""
    import numpy as np
    import torch

    from trainables.data import audio
    from trainables.structure import analysis
    from trainables.structure.model import StructureNet

    torch.manual_seed(0)
    model = StructureNet("mert", **(MERT_95M if backbone == "mert95m" else {})).eval()
    started = time.perf_counter()
    mono = audio.read(track, model.samplerate, channels=None).mean(axis=0).astype(np.float32)
    result = analysis.analyse(model, mono, model.samplerate, model.hop)
    analysis.write_outputs(result, mono, model.samplerate, track, out)
    wall = time.perf_counter() - started
    print(json.dumps({"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a child process: the analysis' own timing when it reports
    one (``--one``), else the whole command's."""
    got = child.run(cmd)
    return got["wall"], got["rss_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", choices=["mert95m", "merttiny"], help=argparse.SUPPRESS)
    p.add_argument("--track", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seconds", type=float, default=240.0)
    args = p.parse_args()
    if args.one:
        return one(args.one, args.track, args.out)

    import soundfile as sf

    from trainables.structure import corpus

    if not SUMMARY.is_file():
        raise SystemExit(f"{SUMMARY}: run python -m platform.tune search_spaces/structure_techhouse.yaml "
                         f"--json {SUMMARY.relative_to(ROOT)} first")
    summary = json.loads(SUMMARY.read_text())
    work = Path(tempfile.mkdtemp(prefix="analyze-speed-"))
    pcm, _ = corpus.render_structure_song("techhouse", 4242, (args.seconds, args.seconds),
                                          corpus.synth.find_soundfont())
    track = work / "track.flac"
    sf.write(track, pcm, corpus.SAMPLERATE)
    duration = len(pcm) / corpus.SAMPLERATE
    cli = child.peak_command("platform.analyze", str(track), "--model", summary["best"]["adapter"],
                             "--tracking-uri", summary["tracking_uri"], "-o", str(work / "cnn"))
    rows = {"cnn (embedded, platform.analyze: whole command)": cli,
            "mert (MERT-v1-95M shape, analysis)": [sys.executable, "-m", "benchmarks.analyze_speed", "--one",
                                                   "mert95m", "--track", str(track), "--out", str(work / "m95")],
            "mert (tiny, analysis)": [sys.executable, "-m", "benchmarks.analyze_speed", "--one", "merttiny",
                                      "--track", str(track), "--out", str(work / "mtiny")]}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeat):
        for name, cmd in rows.items():
            wall, rss = run(cmd)
            best[name] = min(best.get(name, (wall, rss)), (wall, rss))
    print(f"\n{duration:.0f} s track, {os.cpu_count()} CPU cores, torch threads default; fastest of {args.repeat}\n")
    print(f"| {'backbone':<50} | {'RTF':>7} | {'peak RSS (MB)':>13} |")
    print(f"|{'-' * 52}|{'-' * 9}|{'-' * 15}|")
    for name, (wall, rss) in best.items():
        print(f"| {name:<50} | {duration / wall:>6.1f}x | {rss:>13.0f} |")


if __name__ == "__main__":
    main()
