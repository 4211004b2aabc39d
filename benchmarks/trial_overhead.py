"""What running a trial through the platform costs over running the same loop bare.

One run, same config and steps for every row:
  bare            trainables.loop.train in this process (no Ray, no MLflow)
  direct          one Tune trial, loop in the trial process (executor: direct, the default for 1 worker)
  train           one Tune trial running a one-worker Ray Train TorchTrainer (executor: train)
Each platform row is the wall time of Tuner.fit() for a one-trial study (MLflow logging and
checkpoints included); ray.init, the dataset preflight and the base score are shared set-up
and reported apart. Every row trains on one CPU (one torch thread), as a 1-CPU trial does.

    .venv/bin/python -m benchmarks.trial_overhead --steps 20 --epochs 2   (from the repository root)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from platform import preflight, spaces, tune  # run with -m from the root: ``platform`` is rankhouse's

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rankhouse-overhead-"))
    os.environ.setdefault("RANKHOUSE_HOME", str(work / "home"))
    overrides = ["search.num_samples=1", "search.scheduler.type=fifo", f"train.epochs={args.epochs}",
                 f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch_size}",
                 "data.embedded.songs=6", "data.embedded.seconds=12.0", "train.valid_max_seconds=6.0"]
    study = spaces.load(ROOT / "search_spaces" / "techhouse.yaml", overrides)
    study.params = []  # the fixed configuration only: every row trains the same thing
    prepared = preflight.prepare(study)

    import torch

    from trainables import loop

    # every row gets one CPU: Ray gives a 1-CPU trial one torch thread (OMP_NUM_THREADS=1)
    torch.set_num_threads(1)
    rows = []
    started = time.perf_counter()
    loop.train(prepared.config, lambda metrics, folder: None, log=lambda *a: None)
    rows.append(("bare", time.perf_counter() - started))

    import ray

    started = time.perf_counter()
    os.environ.update(tune.RAY_ENV)
    ray.init(runtime_env={"env_vars": tune.RAY_ENV}, log_to_driver=False)
    init_seconds = time.perf_counter() - started
    for name in ("direct", "train"):
        study.config["resources"]["executor"] = name
        study.config["resources"]["cpus_per_worker"] = 1.0
        prepared.config["resources"] = dict(study.config["resources"])
        out = work / name
        out.mkdir()
        uri = tune.tracking_uri(study, out)
        _, exp_id, parent_id = tune.start_parent(uri, study, prepared, out)
        started = time.perf_counter()
        tune.run_search(study, prepared, out, uri, exp_id, parent_id)
        rows.append((name, time.perf_counter() - started))
    ray.shutdown()

    bare = rows[0][1]
    print(f"\nsteps: {args.epochs} epochs x {args.steps} steps, batch {args.batch_size}; "
          f"ray.init {init_seconds:.1f} s (once per search)\n")
    print("| run | wall (s) | vs bare | overhead (s) |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / bare:.2f}x | {seconds - bare:+.1f} |")


if __name__ == "__main__":
    main()
