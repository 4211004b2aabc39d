"""What the driver pays per trial for Optuna's study: SQLite vs in memory vs the SQLite record.

The search's searcher (platform/searcher.py) samples on an in-memory study and copies each
finished trial to SQLite once. This prints, side by side in one run, the driver time of N
trials of ask + 12 sampled parameters + 3 reports + tell with multivariate TPE on:

  sqlite     Optuna's RDBStorage on SQLite (a commit per ask, parameter, report and tell)
  memory     Optuna's in-memory storage (what the searcher samples on)
  + record   memory, plus copying each finished trial into a SQLite study (what it does; the
             searcher makes the copy on a thread of its own, off Tune's event loop, so this
             row is the work, not the time the loop waits: benchmarks/scheduling.py measures that)

    .venv/bin/python -m benchmarks.optuna_storage --trials 100   (from the repository root)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna


def run(storage, trials: int, record: optuna.Study | None = None) -> float:
    study = optuna.create_study(storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=10))
    started = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        value = sum(trial.suggest_float(f"p{j}", 0.0, 1.0) for j in range(12))
        for epoch in range(3):
            trial.report(value + epoch, epoch)
        study.tell(trial, value)
        if record is not None:
            record.add_trial(study._storage.get_trial(trial._trial_id))
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="rankhouse-optuna-storage-"))
    rows = {"sqlite": run(f"sqlite:///{work / 'a.db'}", args.trials), "memory": run(None, args.trials),
            "memory + record": run(None, args.trials, optuna.create_study(storage=f"sqlite:///{work / 'b.db'}",
                                                                          direction="maximize"))}
    print(f"\n{args.trials} trials, 12 parameters, 3 reports each, multivariate TPE (Optuna {optuna.__version__})\n")
    print("| storage | driver time (s) | vs sqlite |")
    print("|---|---:|---:|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.1f} | {seconds / rows['sqlite']:.2f}x |")


if __name__ == "__main__":
    main()
