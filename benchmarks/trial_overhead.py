"""What running a trial through the platform costs over running the same loop bare.

One run, same config and steps for every row:
  bare            trainables.loop.train in this process (no Ray, no MLflow)
  direct          a one-trial search, the loop in the Tune trial process (executor: direct,
                  the default for one worker): a new Ray worker process, cold
  train           a one-trial search running a one-worker Ray Train TorchTrainer (executor: train)
  direct x K      a search of K identical trials, one at a time: Tune reuses the first trial's
                  process for the next (``reuse_actors``), so only the first imports everything
Each platform row is the wall time of Tuner.fit() of a search of its own, on a Ray of its own
(MLflow logging, previews and checkpoints included); Ray's start, the preflight and the base
score are once per search and reported apart. The search row is compared per trial with the
bare loop. Every row trains on one CPU (one torch thread), as a 1-CPU trial does.

    .venv/bin/python -m benchmarks.trial_overhead --steps 10 --epochs 2   (from the repository root)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from platform import preflight, ray_session, spaces, study_runs, tune  # run with -m from the root: ``platform`` is rankhouse's

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--search-trials", type=int, default=3, help="K, the trials of the search row")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rankhouse-overhead-"))
    os.environ.setdefault("RANKHOUSE_HOME", str(work / "home"))
    overrides = ["search.scheduler.type=fifo", f"train.epochs={args.epochs}", "search.max_concurrent=1",
                 f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch_size}",
                 "data.embedded.songs=6", "data.embedded.seconds=12.0", "train.valid_max_seconds=6.0",
                 "resources.cpus_per_worker=1.0"]
    study = spaces.load(ROOT / "search_spaces" / "techhouse.yaml", overrides)
    study.params = []  # the fixed configuration only: every trial trains the same thing
    prepared = preflight.prepare(study)  # renders, checks and caches the corpus once

    import ray
    import torch

    from trainables import loop

    # every row gets one CPU: a 1-CPU trial pins torch to one thread
    torch.set_num_threads(1)
    started = time.perf_counter()
    loop.train(prepared.config, lambda metrics, folder: None, log=lambda *a: None)
    bare = time.perf_counter() - started
    print(f"bare {bare:.1f} s", flush=True)
    rows = [("bare", 1, bare)]
    setup = []
    for name, executor, trials in (("direct", "direct", 1), ("train", "train", 1),
                                   (f"direct x {args.search_trials}", "direct", args.search_trials)):
        study.config["resources"]["executor"] = executor
        study.config["search"]["num_samples"] = trials
        prepared.config["resources"] = dict(study.config["resources"])
        out = work / name.replace(" ", "")
        out.mkdir()
        started = time.perf_counter()
        ray_session.launch_ray(out)
        uri = study_runs.tracking_uri(study, out)
        _, exp_id, parent_id = study_runs.start_parent(uri, study, prepared, out)
        setup.append(time.perf_counter() - started)
        started = time.perf_counter()
        tune.run_search(study, prepared, out, uri, exp_id, parent_id)
        rows.append((name, trials, time.perf_counter() - started))
        ray.shutdown()  # the next row starts cold
        print(f"{name} {rows[-1][2]:.1f} s", flush=True)

    print(f"\n{args.epochs} epochs x {args.steps} steps, batch {args.batch_size}, one CPU; Ray start + parent run "
          f"{statistics.median(setup):.1f} s once per search (not counted)\n")
    print("| run | trials | wall (s) | per trial (s) | per trial vs bare | overhead per trial (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, trials, seconds in rows:
        each = seconds / trials
        print(f"| {name} | {trials} | {seconds:.1f} | {each:.1f} | {each / bare:.2f}x | {each - bare:+.1f} |")


if __name__ == "__main__":
    main()
