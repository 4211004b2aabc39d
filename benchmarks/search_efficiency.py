"""What TPE and early stopping buy: best SDR found against epochs spent, same number of trials.

The same search run several ways (the flagship space: rank, alpha, dropout, per-group ranks,
learning rate and schedule, adapting the embedded 4-stem HT-Demucs to 5-stem tech-house), each
with 3 seeds, through ``python -m platform.tune`` itself. The early-stopping arms are the
schedulers of ``search.scheduler.type`` (platform/schedulers.py), each a maintained
implementation configured, not written:

  tpe+asha          Optuna TPE (multivariate) with Ray's ASHA: asynchronous successive halving
                    (grace 1, reduction factor 4: rungs at epochs 1 and 4)
  tpe+asha-rf8      the same with reduction factor 8: one rung, at epoch 1, where a trial goes on to
                    the last epoch only if it beats 7 in 8 of the results recorded there
  tpe+hyperband     TPE with Ray's HyperBandScheduler: synchronous brackets (reduction factor 2,
                    the only one whose rungs fit 8 epochs: brackets with rungs 1-2-4-8, 2-4-8, 4-8, 8)
  tpe+optuna-b1     TPE with Optuna's SuccessiveHalvingPruner stopping the trials (grace 1,
  tpe+optuna-b3     reduction factor 4) and a bootstrap count of 1 or 3: a rung needs that many
                    results before any trial passes it (the earlier arrivals stop there)
  random+asha       random sampling with ASHA (not run by default: --methods)
  random            random sampling, every trial trained to the last epoch: the reference

Per search: the best valid SDR any trial reached, the epochs all trials consumed, and the best
trial's adapter scored on a test split of its own (benchmarks/heldout.py: songs rendered with a
seed no search or selection uses; the valid split did the selecting, so its best is optimistic).
The table gives the means over seeds, and the epochs as a share of what ``random`` (no stopping)
spends. Target: an early-stopping arm that reaches random-without-stopping's best SDR (or
better) on at most 30% of its epochs, in the mean over seeds.

    .venv/bin/python -m benchmarks.search_efficiency                 (from the repository root)
    .venv/bin/python -m benchmarks.search_efficiency --out runs/search-efficiency
                                      (in parts: every finished search is kept there; the same command goes on)
    .venv/bin/python -m benchmarks.search_efficiency --trials 4 --seeds 1 --epochs 2 --steps 2 \
        --methods tpe+asha random                                    (a smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import kept_results, study_files
from benchmarks.heldout import TEST_SEED, open_test_split

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "search_spaces" / "techhouse.yaml"
ASHA = ["search.scheduler.type=asha", "search.scheduler.grace_period=1", "search.scheduler.reduction_factor=4"]
ASHA_RF8 = ["search.scheduler.type=asha", "search.scheduler.grace_period=1", "search.scheduler.reduction_factor=8"]
OPTUNA_SHA = ["search.scheduler.type=optuna", "search.scheduler.grace_period=1", "search.scheduler.reduction_factor=4"]
METHODS = {  # name -> the search's overrides
    "tpe+asha": ["search.sampler=tpe", *ASHA],
    "tpe+asha-rf8": ["search.sampler=tpe", *ASHA_RF8],
    "tpe+hyperband": ["search.sampler=tpe", "search.scheduler.type=hyperband", "search.scheduler.reduction_factor=2"],
    "tpe+optuna-b1": ["search.sampler=tpe", *OPTUNA_SHA, "search.scheduler.bootstrap_count=1"],
    "tpe+optuna-b3": ["search.sampler=tpe", *OPTUNA_SHA, "search.scheduler.bootstrap_count=3"],
    "random+asha": ["search.sampler=random", *ASHA],
    "random": ["search.sampler=random", "search.scheduler.type=fifo"],
}
DEFAULT_METHODS = ["tpe+asha", "tpe+hyperband", "tpe+optuna-b1", "tpe+optuna-b3", "random"]
REFERENCE = "random"


def run_search(method: str, seed: int, args, work: Path) -> dict:
    out = work / f"{method}-seed{seed}"
    started = time.perf_counter()
    s = study_files.run_search(STUDY, [
        f"search.num_samples={args.trials}", "search.max_concurrent=2", f"search.seed={seed}", *METHODS[method],
        f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch}",
        f"train.valid_max_seconds={args.valid_seconds}", "resources.cpus_per_worker=1.0"], out)
    return {"method": method, "seed": seed, "best": s["best"]["best"],
            "test": test_sdr(s["tracking_uri"], s["best"]["run_id"], args, out / "best-adapter"),
            "epochs": sum(t["epochs"] for t in s["trials"]), "trials": len(s["trials"]),
            "minutes": (time.perf_counter() - started) / 60, "base": s["base"]["metrics"]["valid/sdr"]}


def test_sdr(uri: str, run_id: str, args, folder: Path) -> float:
    """The search's best adapter on the test split: the valid metric (nSDR, the objective), on
    songs no search selected on."""
    import torch

    from platform import models
    from trainables import bundle
    from trainables.separation import evaluate_tracks, normalize_sources

    loaded = bundle.load(models.download_run_folder(uri, run_id, "adapter", folder))
    info = loaded.manifest
    test = open_test_split(STUDY, info, args.test_songs, args.test_seconds)
    return evaluate_tracks(loaded.model, test.data, normalize_sources(info["sources"]), int(info["samplerate"]),
                           float(info["segment"]), torch.device("cpu"), test.max_seconds)["valid/sdr"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8, help="the most a trial trains (ASHA's max_t)")
    p.add_argument("--steps", type=int, default=4, help="steps per epoch")
    p.add_argument("--batch", type=int, default=2, help="batch size")
    p.add_argument("--valid-seconds", type=float, default=6.0, help="seconds of each valid song scored")
    p.add_argument("--test-songs", type=int, default=7, help="songs in the test split")
    p.add_argument("--test-seconds", type=float, default=10.0, help="seconds of each test song scored")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS,
                   help=f"the arms to run ({REFERENCE} is always run: the reference)")
    p.add_argument("--out", type=Path, help="the work folder; one holding an earlier run's results keeps its "
                                           "searches and runs the others (default: a new temporary folder)")
    args = p.parse_args()
    args.methods = [m for m in args.methods if m != REFERENCE] + [REFERENCE]
    work = args.out or Path(tempfile.mkdtemp(prefix="rankhouse-search-efficiency-"))
    rows = kept_results.load(work, settings(args))
    done = {(r["method"], r["seed"]) for r in rows}
    if rows:
        print(f"{work / kept_results.FILE}: {len(rows)} searches kept from an earlier run", flush=True)
    started, code = time.perf_counter(), kept_results.commit()
    for seed in range(args.seeds):
        for method in args.methods:
            if (method, seed) in done:
                continue
            r = run_search(method, seed, args, work)
            rows.append({**r, "settings": settings(args), "commit": code})
            kept_results.save(work, rows)  # a killed benchmark keeps every finished search
            print(f"  {method:<12} seed {seed}: best {r['best']:.3f} dB (test {r['test']:.3f}), {r['epochs']} epochs "
                  f"over {r['trials']} trials, {r['minutes']:.1f} min", flush=True)
    table([r for r in rows if r["method"] in args.methods and r["seed"] < args.seeds], args)
    print(f"\nresults: {work / kept_results.FILE}; {(time.perf_counter() - started) / 60:.1f} min")


def settings(args) -> dict:
    """What kept searches must share with this run to sit in its table (more seeds or methods extend it)."""
    return {k: getattr(args, k) for k in ("trials", "epochs", "steps", "batch", "valid_seconds", "test_songs",
                                          "test_seconds")}


def table(rows: list[dict], args) -> None:
    def of(method, key):  # seed by seed, so that two methods' lists pair up
        return [r[key] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == method]

    full, reference = statistics.mean(of(REFERENCE, "epochs")), statistics.mean(of(REFERENCE, "best"))
    test_reference = statistics.mean(of(REFERENCE, "test"))
    print(f"\n{args.trials} trials per search, at most {args.epochs} epochs x {args.steps} steps per trial, "
          f"batch {args.batch}, {args.seeds} seeds; base valid SDR {rows[0]['base']:.3f}; test: the best trial's "
          f"adapter on {args.test_songs} songs of render seed {TEST_SEED}")
    print(kept_results.code_line(rows))
    head = (f"{'method':<15} {'best SDR':>16} {'vs random':>9} {'seeds >= random':>15} {'test SDR':>16} "
            f"{'vs random':>9} {'epochs':>8} {'of random':>9} {'minutes':>8}")
    print(head)
    print("-" * len(head))
    for m in args.methods:
        best, epochs = of(m, "best"), of(m, "epochs")
        spread = statistics.stdev(best) if len(best) > 1 else 0.0
        reached = sum(b >= r - 1e-9 for b, r in zip(best, of(REFERENCE, "best")))  # same seed, same order
        test = of(m, "test")
        test_spread = statistics.stdev(test) if len(test) > 1 else 0.0
        print(f"{m:<15} {statistics.mean(best):>8.3f} ±{spread:.3f} {statistics.mean(best) - reference:>+9.3f} "
              f"{f'{reached}/{len(best)}':>15} {statistics.mean(test):>8.3f} ±{test_spread:.3f} "
              f"{statistics.mean(test) - test_reference:>+9.3f} {statistics.mean(epochs):>8.1f} {statistics.mean(epochs) / full:>9.0%} "
              f"{statistics.mean(of(m, 'minutes')):>8.1f}")
    for m in args.methods:
        if m == REFERENCE:
            continue
        gap, share = statistics.mean(of(m, "best")) - reference, statistics.mean(of(m, "epochs")) / full
        print(f"target: {m} reaches random's best ({gap:+.3f} dB) on <= 30% of its epochs ({share:.0%}): "
              f"{'met' if gap >= 0 and share <= 0.3 else 'NOT met'}")


if __name__ == "__main__":
    main()
