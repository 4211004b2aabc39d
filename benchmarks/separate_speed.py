"""``python -m platform.separate``'s speed and memory for each separator family's champion,
side by side in one run: real-time factor and peak resident memory.

Each family's adapter is the best trial of its shipped tech-house search (the ``--json`` summary
``python -m platform.tune`` writes; run the searches first). Every command is the real CLI in a
fresh process, one at a time, on a rendered tech-house mixture (44.1 kHz stereo) of ``--long``
and of ``--short`` seconds, each ``--repeat`` times in turns across the families (the fastest
time counts):

  RTF (command)   the whole command's wall time over the audio's duration, 1 is real time
  RTF (marginal)  (long - short wall) / (long - short audio): the cost of one more second of
                  audio, without start-up (imports, MLflow, the base and adapter loading)
  peak RSS        the command's peak resident memory on the long file (ru_maxrss of the process)

    .venv/bin/python -m benchmarks.separate_speed          (from the repository root)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = {"htdemucs": "runs/techhouse/summary.json", "bs_roformer": "runs/bs_roformer_techhouse/summary.json",
             "scnet": "runs/scnet_techhouse/summary.json"}


def champion(family: str, summary: Path) -> tuple[str, str]:
    """(adapter reference, tracking URI) of the best trial in a search's summary."""
    if not summary.is_file():
        raise SystemExit(f"{summary}: no summary of the {family} search; run python -m platform.tune on its "
                         f"space with --json {summary}, or pass --summary {family}=PATH")
    doc = json.loads(summary.read_text())
    if not (doc.get("best") or {}).get("adapter"):
        raise SystemExit(f"{summary}: the search has no best trial with an adapter")
    return doc["best"]["adapter"], doc["tracking_uri"]


def mixture(seconds: float, out: Path) -> Path:
    """A rendered tech-house mixture of this length, 44.1 kHz stereo 16-bit."""
    import soundfile as sf

    from trainables.data import render

    stems, _ = render.render_song("techhouse", render.song_seed(7, 0), seconds)
    path = out / f"mix_{seconds:g}s.wav"
    sf.write(path, stems["mixture"].T, render.SAMPLERATE, subtype="PCM_16")
    return path


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command in its own process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    output = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summary", action="append", default=[], metavar="FAMILY=PATH",
                   help="a family's search summary (default: " + ", ".join(f"{k}={v}" for k, v in SUMMARIES.items()) + ")")
    p.add_argument("--long", type=float, default=60.0, help="seconds of the long mixture")
    p.add_argument("--short", type=float, default=10.0, help="seconds of the short mixture")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    summaries = dict(SUMMARIES)
    for item in args.summary:
        family, _, path = item.partition("=")
        summaries[family] = path
    champions = {f: champion(f, ROOT / path) for f, path in summaries.items()}

    work = Path(tempfile.mkdtemp(prefix="rankhouse-separate-speed-"))
    files = {s: mixture(s, work) for s in (args.short, args.long)}
    print(f"torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}; mixtures: {args.short:g} s and "
          f"{args.long:g} s of rendered tech-house; {args.repeat} runs each, in turns\n", flush=True)
    walls = {(f, s): [] for f in champions for s in files}
    peaks = {f: 0.0 for f in champions}
    for r in range(args.repeat):
        for family, (ref, uri) in champions.items():
            for seconds, path in files.items():
                cmd = [sys.executable, "-m", "platform.separate", str(path), "--model", ref, "--tracking-uri", uri,
                       "-o", str(work / f"out_{family}_{r}")]
                wall, peak = timed(cmd)
                walls[family, seconds].append(wall)
                if seconds == args.long:
                    peaks[family] = max(peaks[family], peak)
                print(f"  {family:<12} {seconds:>5g} s: {wall:6.1f} s wall, peak RSS {peak:7.1f} MiB", flush=True)

    print("\n| family | RTF (command, long) | RTF (marginal) | marginal vs htdemucs | peak RSS (MiB) | vs htdemucs |")
    print("|---|---:|---:|---:|---:|---:|")
    span = args.long - args.short
    marginal = {f: (min(walls[f, args.long]) - min(walls[f, args.short])) / span for f in champions}
    ref_family = "htdemucs" if "htdemucs" in champions else next(iter(champions))
    for f in champions:
        print(f"| {f} | {min(walls[f, args.long]) / args.long:.3f} | {marginal[f]:.3f} | "
              f"{marginal[f] / marginal[ref_family]:.2f}x | {peaks[f]:.0f} | {peaks[f] / peaks[ref_family]:.2f}x |")
    print(f"\n(RTF below 1 is faster than real time; work files in {work})")


if __name__ == "__main__":
    main()
