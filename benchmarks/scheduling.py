"""What the platform's bookkeeping costs a search of many very short trials.

The same search twice, side by side in one Ray session (the platform's; trial processes are
reused in both arms), over the same space, sampler seed, ASHA and concurrency:

  tune       Ray Tune alone: Tuner + OptunaSearch (TPE, in memory) + ASHA over a function that
             reports a synthetic objective and a tiny checkpoint each epoch
  platform   ``platform.tune.run_search`` with that same function as the trial's training
             function: the trial process's MLflow child run (params, metrics per epoch, the
             best epoch's adapter artifact, status), each finished trial recorded in Optuna's
             SQLite study (the sampler's own study is in memory, as in the Tune arm), then what
             ``python -m platform.tune`` does after Tune returns (closing the runs, the summary,
             the study's plots)

The training function sleeps ``--epoch-ms`` per epoch instead of training, so what is left is
scheduling and bookkeeping. Rounds alternate the two (tune, platform, platform, tune, ...) and
the medians are compared. MLflow records/s counts what the platform wrote to its store (runs,
params, tags, metric values) per second of the platform's wall time.

    .venv/bin/python -m benchmarks.scheduling --trials 200 --repeat 2   (from the repository root)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the platform arm's stages: its parent run (and the MLflow store's creation), Tuner.fit, closing
# the runs Tune ended, the summary, the study's plots
PLATFORM_STAGES = ("parent", "search", "close", "summary", "plots")

# synthetic_epoch, synthetic_train and tune_alone_trial run in Ray's trial processes. This file
# runs as ``__main__``, so Ray ships them by value; they must not reach for ``platform`` (the
# standard library's there).


def synthetic_epoch(cfg: dict, epoch: int, folder: Path, epoch_ms: float) -> dict:
    """One 'epoch': a smooth objective of the sampled values (best near rank 16, lr 1e-3) that
    improves with epochs, and a checkpoint folder shaped like a trial's (a small adapter), written
    without torch (see trainables/trial.py)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    time.sleep(epoch_ms / 1000)
    rank, lr = cfg["lora"]["rank"], cfg["optim"]["lr"]
    score = 5.0 - (math.log2(rank) - 4) ** 2 * 0.3 - (math.log10(lr) + 3) ** 2 - 2.0 / epoch
    (folder / "adapter").mkdir()
    save_file({"lora_A": np.zeros((rank, 64), np.float32), "lora_B": np.zeros((64, rank), np.float32)},
              str(folder / "adapter" / "adapter_model.safetensors"))
    metrics = {"valid/sdr": score, "valid/loss": 1.0 / (1.0 + score * score), "train/loss": 0.1, "epoch": epoch,
               "pid": os.getpid()}
    (folder / "state.json").write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
    return metrics


def synthetic_train(cfg: dict, report, resume_from=None, device=None, prepare_model=None, log=None,
                    on_setup=None, rank: int = 0) -> dict:
    """``trainables.loop.train``'s signature over ``synthetic_epoch``: the platform arm's trials.
    ``log`` is not ``print``: shipped by value, the function carries its defaults, and after a
    first search in the process Ray has replaced ``builtins.print``, which then cannot be pickled."""
    import json

    # resumed (a retry, or HyperBand's unpause): from the epoch its checkpoint holds
    start = json.loads((Path(resume_from) / "state.json").read_text())["epoch"] if resume_from else 0
    metrics = {}
    for epoch in range(start + 1, int(cfg["train"]["epochs"]) + 1):
        with tempfile.TemporaryDirectory() as tmp:
            metrics = synthetic_epoch(cfg, epoch, Path(tmp), cfg["train"]["epoch_ms"])
            if report(metrics, Path(tmp)):
                break
    return metrics


def tune_alone_trial(sampled: dict, base: dict, paths: dict) -> None:
    """The Tune-alone arm's trial: the same epochs reported straight to Tune."""
    import copy

    import ray.tune

    # platform.spaces.SampleToConfig, written out: importing the platform (torch, PEFT, MLflow's
    # helpers) would add its imports to the arm it is measured against
    cfg = copy.deepcopy(base)
    for key, value in sampled.items():
        node = cfg
        for part in paths[key][:-1]:
            node = node.setdefault(part, {})
        node[paths[key][-1]] = value
    for epoch in range(1, int(cfg["train"]["epochs"]) + 1):
        with tempfile.TemporaryDirectory() as tmp:
            metrics = synthetic_epoch(cfg, epoch, Path(tmp), cfg["train"]["epoch_ms"])
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def synthetic_prepared(study, epoch_ms: float):
    """The preflight's result for the synthetic objective, which needs no data and no base: the
    study's config with paths resolved and ``train.epoch_ms``, a placeholder base identity."""
    from platform.preflight import Prepared, resolve_data

    cfg = resolve_data(study)
    cfg["train"]["epoch_ms"] = epoch_ms
    return Prepared(cfg, {"name": "synthetic", "sha256": None}, {}, {})


def mlflow_records(store: str) -> int:
    """Rows in an MLflow store's runs, params, tags and metrics (every metric value logged);
    ``store``: its database URL (SQLite or PostgreSQL)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(store)
    try:
        with engine.connect() as conn:
            return sum(conn.execute(sqlalchemy.text(f"select count(*) from {t}")).scalar()
                       for t in ("runs", "params", "tags", "metrics"))
    finally:
        engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--epoch-ms", type=float, default=50.0, help="what one synthetic epoch sleeps")
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2, help="rounds of both arms; medians are compared")
    args = p.parse_args()

    import optuna
    import ray
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from platform import ray_session, report, spaces, study_runs, tune
    from platform.searcher import sampler
    from platform.summary import summarize

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="rankhouse-scheduling-"))
    cpus = 2.0 / args.concurrent
    overrides = [f"search.num_samples={args.trials}", f"search.max_concurrent={args.concurrent}",
                 f"train.epochs={args.epochs}", f"resources.cpus_per_worker={cpus}", "data.root=" + str(work)]
    study = spaces.load(ROOT / "search_spaces" / "techhouse.yaml", overrides)
    prepared = synthetic_prepared(study, args.epoch_ms)
    cfg = prepared.config
    metric, mode = study.config["objective"]["metric"], study.config["objective"]["mode"]

    def run_tune_alone(out: Path) -> dict:
        s = study.config["search"]
        searcher = OptunaSearch(space=spaces.DefineByRun(study.params), metric=metric, mode=mode,
                                sampler=sampler(s))
        sch = s["scheduler"]
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(tune_alone_trial, base={k: v for k, v in cfg.items() if k != "search"},
                                     paths={q.key: list(q.path) for q in study.params}),
            {"cpu": cpus})
        started = time.perf_counter()
        results = ray_tune.Tuner(
            trainable,
            tune_config=ray_tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=args.concurrent), num_samples=args.trials,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=args.epochs,
                                        grace_period=sch["grace_period"], reduction_factor=sch["reduction_factor"]),
                metric=metric, mode=mode, reuse_actors=True),
            run_config=ray_tune.RunConfig(name="tune", storage_path=str(out), verbose=0,
                                          checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=2)),
        ).fit()
        wall = time.perf_counter() - started
        reports = sum(len(r.metrics_dataframe) for r in results if r.metrics_dataframe is not None)
        return {"wall": wall, "fit": wall, "trials": len(results), "reports": reports, "records": 0}

    def run_platform(out: Path) -> dict:
        out.mkdir(parents=True)
        stages, started = {}, time.perf_counter()

        def stage(name: str) -> None:  # seconds since the previous stage ended
            stages[name] = time.perf_counter() - started - sum(stages.values())

        uri = study_runs.tracking_uri(study, out)
        _, exp_id, parent_id = study_runs.start_parent(uri, study, prepared, out)
        stage("parent")
        results = tune.run_search(study, prepared, out, uri, exp_id, parent_id, train=synthetic_train)
        stage("search")
        tune.close_child_runs(study, results, uri, exp_id, parent_id)
        stage("close")
        summary = summarize(study, results, prepared, uri, study.name, exp_id, parent_id)
        stage("summary")
        report.study_plots(summary, uri, parent_id, study_runs.optuna_storage_url(study, out),
                           study_runs.optuna_study_name(study, parent_id), out / "plots")
        stage("plots")
        wall = time.perf_counter() - started
        reports = sum(t["epochs"] for t in summary["trials"])
        return {"wall": wall, "fit": stages["parent"] + stages["search"], "trials": len(summary["trials"]),
                "reports": reports, "records": mlflow_records(uri), **stages}

    ray_session.launch_ray(work)
    rows: dict[str, list[dict]] = {"tune": [], "platform": []}
    for i in range(args.repeat):
        order = ("tune", "platform") if i % 2 == 0 else ("platform", "tune")
        for arm in order:
            out = work / f"{arm}-{i}"
            rows[arm].append(run_tune_alone(out) if arm == "tune" else run_platform(out))
            r = rows[arm][-1]
            print(f"round {i + 1} {arm}: {r['trials']} trials, {r['reports']} results, {r['wall']:.1f} s", flush=True)
    ray.shutdown()

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[arm])

    tune_wall = med("tune", "wall")
    print(f"\n{args.trials} trials x up to {args.epochs} epochs of {args.epoch_ms:g} ms, ASHA, "
          f"{args.concurrent} concurrent ({cpus:g} CPU each), {args.repeat} rounds (medians)\n")
    print("| arm | wall (s) | of which Tuner.fit (s) | trials/min | Tune results/s | MLflow records/s | vs Tune alone |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm in ("tune", "platform"):
        wall = med(arm, "wall")
        print(f"| {arm} | {wall:.1f} | {med(arm, 'fit'):.1f} | {60 * med(arm, 'trials') / wall:.0f} | "
              f"{med(arm, 'reports') / wall:.1f} | {med(arm, 'records') / wall:.0f} | {wall / tune_wall:.2f}x |")
    print("\nThe platform's wall time by stage (medians, s): " + ", ".join(
        f"{name} {med('platform', name):.2f}" for name in PLATFORM_STAGES))


if __name__ == "__main__":
    main()
