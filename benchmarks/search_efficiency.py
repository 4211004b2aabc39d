"""What TPE and early stopping buy: best SDR found against epochs spent, same number of trials.

Three ways to run the same search (the flagship space: rank, alpha, dropout, per-group ranks,
learning rate and schedule, adapting the embedded 4-stem HT-Demucs to 5-stem tech-house), each
with 3 seeds, through ``python -m platform.tune`` itself:

  tpe+asha        Optuna TPE (multivariate) with ASHA early stopping: the platform's default
  random+asha     random sampling with ASHA
  random          random sampling, every trial trained to the last epoch

Per search: the best valid SDR any trial reached and the epochs all trials consumed. The table
gives the means over seeds, and the epochs as a share of what ``random`` (no stopping) spends.
Target: TPE + ASHA within 0.3 dB of the best SDR any method found, on at most 30% of the epochs
random-without-stopping spends.

    .venv/bin/python -m benchmarks.search_efficiency                 (from the repository root)
    .venv/bin/python -m benchmarks.search_efficiency --trials 4 --seeds 1 --epochs 2 --steps 2   (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"tpe+asha": ("tpe", "asha"), "random+asha": ("random", "asha"), "random": ("random", "fifo")}


def run_search(method: str, seed: int, args, work: Path) -> dict:
    sampler, scheduler = METHODS[method]
    out = work / f"{method}-seed{seed}"
    summary = out / "summary.json"
    cmd = [sys.executable, "-m", "platform.tune", "search_spaces/techhouse.yaml",
           f"search.num_samples={args.trials}", "search.max_concurrent=2", f"search.seed={seed}",
           f"search.sampler={sampler}", f"search.scheduler.type={scheduler}",
           f"search.scheduler.grace_period={args.grace}", f"search.scheduler.reduction_factor={args.reduction}",
           f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch}",
           f"train.valid_max_seconds={args.valid_seconds}",
           "resources.cpus_per_worker=1.0", f"tracking.output={out}", "--json", str(summary)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    s = json.loads(summary.read_text())
    scored = [t for t in s["trials"] if t["best"] is not None]
    return {"method": method, "seed": seed, "best": max(t["best"] for t in scored),
            "epochs": sum(t["epochs"] for t in s["trials"]), "trials": len(s["trials"]),
            "minutes": (time.perf_counter() - started) / 60, "base": s["base"]["metrics"]["valid/sdr"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8, help="the most a trial trains (ASHA's max_t)")
    p.add_argument("--steps", type=int, default=4, help="steps per epoch")
    p.add_argument("--batch", type=int, default=2, help="batch size")
    p.add_argument("--valid-seconds", type=float, default=6.0, help="seconds of each valid song scored")
    p.add_argument("--grace", type=int, default=1, help="ASHA's grace period (epochs)")
    p.add_argument("--reduction", type=int, default=4, help="ASHA's reduction factor")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rankhouse-search-efficiency-"))
    started = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        for method in METHODS:
            r = run_search(method, seed, args, work)
            rows.append(r)
            print(f"  {method:<12} seed {seed}: best {r['best']:.3f} dB, {r['epochs']} epochs over {r['trials']} "
                  f"trials, {r['minutes']:.1f} min", flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    table(rows, args)
    print(f"\nresults: {work / 'results.json'}; {(time.perf_counter() - started) / 60:.1f} min")


def table(rows: list[dict], args) -> None:
    def of(method, key):
        return [r[key] for r in rows if r["method"] == method]

    full = statistics.mean(of("random", "epochs"))
    top = max(statistics.mean(of(m, "best")) for m in METHODS)
    print(f"\n{args.trials} trials per search, at most {args.epochs} epochs x {args.steps} steps per trial, "
          f"batch {args.batch}, {args.seeds} seeds; base valid SDR {rows[0]['base']:.3f}")
    head = f"{'method':<12} {'best SDR':>16} {'vs top':>7} {'epochs':>8} {'of random':>9} {'minutes':>8}"
    print(head)
    print("-" * len(head))
    for m in METHODS:
        best, epochs = of(m, "best"), of(m, "epochs")
        spread = statistics.stdev(best) if len(best) > 1 else 0.0
        print(f"{m:<12} {statistics.mean(best):>8.3f} ±{spread:.3f} {statistics.mean(best) - top:>+7.3f} "
              f"{statistics.mean(epochs):>8.1f} {statistics.mean(epochs) / full:>9.0%} "
              f"{statistics.mean(of(m, 'minutes')):>8.1f}")
    gap, share = top - statistics.mean(of("tpe+asha", "best")), statistics.mean(of("tpe+asha", "epochs")) / full
    print(f"target: TPE + ASHA within 0.3 dB of the best ({gap:.3f} dB below) on <= 30% of random's epochs "
          f"({share:.0%}): {'met' if gap <= 0.3 and share <= 0.3 else 'NOT met'}")


if __name__ == "__main__":
    main()
