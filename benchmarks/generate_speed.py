"""``platform.generate``'s speed and memory against the number of sampling steps, side by side
in one run, with the embedded ACE-Step base (what a champion adapter adds is a few small
matrices, merged or not):

  x real time  seconds of audio generated per second of wall time (above 1: faster than real
               time): Euler sampling with classifier-free guidance (two transformer passes a
               step) and Griffin-Lim back to audio
  sampling     the share of that time spent in the transformer
  peak RSS     the process' peak resident memory (ru_maxrss), model and imports included

Each step count runs in a fresh process, ``--repeat`` times in turns (the fastest counts); the
last row is the whole ``python -m platform.generate`` command at its default steps, start-up
and imports included.

    .venv/bin/python -m benchmarks.generate_speed          (from the repository root)
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

PROMPT = "tech house, 126 bpm, kick, hihat"


def one(steps: int, seconds: float) -> None:
    """In this process: generate ``seconds`` at ``steps``; print the timings and peak RSS."""
    import torch

    from platform.generate import GUIDANCE
    from trainables.acestep import flow, tags
    from trainables.acestep.family import AceStepFamily

    base = AceStepFamily().build_base({"base": "embedded"})
    model, latent = base.model.eval(), base.latent
    tokens = torch.from_numpy(model.prompt(tags.parse(PROMPT), seconds))[None]
    started = time.perf_counter()
    z = flow.sample(model, tokens, latent.frames(seconds), steps, flow.SHIFT, GUIDANCE, torch.Generator().manual_seed(0))
    sampled = time.perf_counter()
    latent.decode(z[0].numpy())
    done = time.perf_counter()
    print(json.dumps({"wall": done - started, "sampling": sampled - started,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    from platform.generate import STEPS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, STEPS, 40])
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    if args.one:
        return one(args.one, args.seconds)
    work = Path(tempfile.mkdtemp(prefix="generate-speed-"))
    rows = {f"{n} steps": [sys.executable, "-m", "benchmarks.generate_speed", "--one", str(n), "--seconds",
                           str(args.seconds)] for n in args.steps}
    rows[f"{STEPS} steps, whole command"] = child.peak_command("platform.generate", "--model", "embedded",
                                                               "--prompt", PROMPT, "--seconds", str(args.seconds),
                                                               "-o", str(work / "out.wav"))
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name, cmd in rows.items():
            got = child.run(cmd)
            if name not in best or got["wall"] < best[name]["wall"]:
                best[name] = got
    print(f"\n{args.seconds:g} s of audio, {os.cpu_count()} CPU cores, torch threads default; "
          f"fastest of {args.repeat}\n")
    print(f"| {'sampling steps':<28} | {'x real time':>11} | {'sampling':>8} | {'peak RSS (MB)':>13} |")
    print(f"|{'-' * 30}|{'-' * 13}|{'-' * 10}|{'-' * 15}|")
    for name, r in best.items():
        share = f"{r['sampling'] / r['wall']:.0%}" if "sampling" in r else "-"
        print(f"| {name:<28} | {args.seconds / r['wall']:>10.2f}x | {share:>8} | {r['rss_mb']:>13.0f} |")


if __name__ == "__main__":
    main()
