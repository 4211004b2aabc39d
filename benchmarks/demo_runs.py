"""The demo's headline figures as a mean and spread over reruns of the same command, not one run.

``make demo`` is ``python -m platform.tune search_spaces/techhouse.yaml`` with its shipped seeds.
Rerun on the same code it is not bit-reproducible: with 2 trials at a time, TPE's suggestions
depend on the order in which trials finish, which the machine's timing decides. This runs the
demo N times (each into a fresh output folder, the same seeds), then ``platform.promote
--dry-run`` on each (the best trial and the base on the promotion holdout, museval's SDR), and
prints each run and the mean, standard deviation and range of the figures the README quotes.

    .venv/bin/python -m benchmarks.demo_runs                 (from the repository root; 3 runs)
    .venv/bin/python -m benchmarks.demo_runs --runs 2 search.num_samples=2 train.epochs=1 \\
        train.steps_per_epoch=2                              (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.study_files import run_cli, run_search

ROOT = Path(__file__).resolve().parents[1]
SPACE = "search_spaces/techhouse.yaml"


def promote_dry_run(overrides: list[str], writes: Path) -> dict:
    """``platform.promote --dry-run``'s JSON; a refusal (exit 1) writes one too, a crash does not."""
    proc = run_cli([sys.executable, "-m", "platform.promote", SPACE, *overrides, "--dry-run", "--json", str(writes)],
                   ok=(0, 1))
    if not writes.is_file():  # a crash exits 1 too
        raise SystemExit(f"platform.promote --dry-run wrote no {writes}:\n{proc.stderr[-2000:]}")
    return json.loads(writes.read_text())


def one(i: int, args, work: Path) -> dict:
    out = work / f"run{i}"
    started = time.perf_counter()
    s = run_search(ROOT / SPACE, args.overrides, out)
    minutes = (time.perf_counter() - started) / 60
    # a dry run registers nothing; a refusal is a result too
    p = promote_dry_run([*args.overrides, f"tracking.output={out}"], out / "promote.json")
    return {"run": i, "minutes": minutes, "base": s["base"]["metrics"], "best": s["best"]["best"],
            "best_metrics": s["best"]["metrics"], "config": s["best"]["config"],
            "epochs": sum(t["epochs"] for t in s["trials"]),
            "holdout": p["candidate"]["holdout"]["sdr"], "holdout_base": p["reference"]["holdout"]["sdr"],
            "gain": p["gain"]}


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ±{sd:.2f} [{min(values):.2f}, {max(values):.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (a smoke run's sizes)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rankhouse-demo-runs-"))
    started = time.perf_counter()
    rows = []
    for i in range(args.runs):
        rows.append(one(i, args, work))
        r = rows[-1]
        print(f"run {i}: best valid SDR {r['best']:.3f} ({r['epochs']} epochs, {r['minutes']:.1f} min); holdout "
              f"{r['holdout']:.3f} vs base {r['holdout_base']:.3f} ({r['gain']:+.3f}); {r['config']}", flush=True)
        (work / "results.json").write_text(json.dumps(rows, indent=1))

    sources = [k.removeprefix("valid/sdr/") for k in rows[0]["best_metrics"] if k.startswith("valid/sdr/")]
    print(f"\n{len(rows)} runs of {SPACE} {' '.join(args.overrides)} (mean ±sd [min, max])")
    print(f"{'valid nSDR (dB)':<22} {'mean':>24} " + " ".join(f"{s:>24}" for s in sources))
    print(f"{'base (no adapter)':<22} {spread([r['base']['valid/sdr'] for r in rows]):>24} "
          + " ".join(f"{spread([r['base'][f'valid/sdr/{s}'] for r in rows]):>24}" for s in sources))
    print(f"{'best trial':<22} {spread([r['best'] for r in rows]):>24} "
          + " ".join(f"{spread([r['best_metrics'][f'valid/sdr/{s}'] for r in rows]):>24}" for s in sources))
    print("(best trial: the mean at its best epoch, the sources at its last, as MLflow keeps a run's metrics)")
    print(f"\npromotion holdout (museval SDR): best trial {spread([r['holdout'] for r in rows])}, "
          f"base {spread([r['holdout_base'] for r in rows])}, gain {spread([r['gain'] for r in rows])}")
    print(f"minutes per run {spread([r['minutes'] for r in rows])}; epochs per search "
          f"{spread([float(r['epochs']) for r in rows])}")
    print(f"\nresults: {work / 'results.json'}; {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
