"""``python -m platform.tune SPACE.yaml [key=value ...] [--json SUMMARY.json]``: search LoRA configurations.

Ray Tune samples configurations with Optuna (TPE, multivariate, define-by-run; the study kept
in SQLite) and stops weak trials early with ASHA; each trial is a Ray Train job running
``trainables.loop``; MLflow gets a parent run for the study and a child run per trial.
Everything that can be wrong with the inputs is checked before Ray starts.

This module runs the search; its neighbours own the rest: ``platform.ray_session`` (the Ray it
runs on), ``platform.study_runs`` (the study's folders and MLflow parent runs, shared with
promotion) and ``platform.summary`` (the summary and the tables printed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Callable

from platform import cli, database, report, spaces
from platform.preflight import prepare
from platform.ray_session import launch_ray, local_only, stop_stale_ray
from platform.study_runs import (browse, optuna_storage_url, optuna_study_name, output_dir, resume_parent,
                                 start_parent, tracking_uri)
from platform.summary import markdown, print_pareto, print_table, summarize
from trainables import tags, tracking
from trainables.errors import RankhouseError
from trainables.trial import executor, trial_resources

TRIAL_FUNCTION_CPU = 0.01  # Ray refuses 0; with the train executor the trial function only waits


def trial_needs(study: spaces.Study) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds. With the ``train`` executor the trial's function holds a CPU
    sliver besides its workers."""
    r = study.config["resources"]
    cpus = TRIAL_FUNCTION_CPU + r["workers_per_trial"] * r["cpus_per_worker"] if executor(r) == "train" \
        else r["cpus_per_worker"]
    return cpus, r["workers_per_trial"] * r["gpus_per_worker"]


def refuse_unfit(study: spaces.Study, total_cpus: float, total_gpus: float) -> None:
    cpus, gpus = trial_needs(study)
    if cpus > total_cpus or gpus > total_gpus:
        raise RankhouseError(f"{study.file}: resources: a trial needs {cpus:g} CPUs and {gpus:g} GPUs but the "
                             f"cluster has {total_cpus:g} and {total_gpus:g}; lower resources.cpus_per_worker "
                             "or resources.gpus_per_worker")


def concurrency(study: spaces.Study, total_cpus: float, total_gpus: float, autoscaling: bool = False) -> int:
    """Trials that fit side by side. With the ``train`` executor a trial's function holds a CPU
    sliver and its workers are placed later: more trials than fit would start, then wait on
    each other's workers and time out instead of queueing. So the limit is computed here.

    On a cluster (``RAY_ADDRESS``) the autoscaler may add GPU nodes that do not exist yet (node
    types scale from 0), so there a request beyond today's resources is a note, not an error."""
    cpus, gpus = trial_needs(study)
    if (cpus > total_cpus or gpus > total_gpus) and autoscaling:
        print(f"note: a trial needs {cpus:g} CPUs and {gpus:g} GPUs, the cluster has {total_cpus:g} and "
              f"{total_gpus:g} now; trials wait for the autoscaler to add nodes")
        return study.config["search"]["max_concurrent"]
    refuse_unfit(study, total_cpus, total_gpus)
    fits = int(total_cpus // cpus)
    if gpus > 0:
        fits = min(fits, int(total_gpus // gpus))
    wanted = study.config["search"]["max_concurrent"]
    if fits < wanted:
        print(f"note: search.max_concurrent {wanted} lowered to {fits}: that many trials fit in the "
              f"cluster's {total_cpus:g} CPUs / {total_gpus:g} GPUs")
    return max(1, min(wanted, fits))


def trial_limit(study: spaces.Study, out: Path) -> int:
    """Start (or join) the search's Ray and return how many trials fit side by side. A trial
    that fits nowhere in Ray's count is refused here, before the search's parent run is created."""
    import ray

    launch_ray(out)
    resources = ray.cluster_resources()
    return concurrency(study, resources.get("CPU", 0), resources.get("GPU", 0),
                       autoscaling=bool(os.environ.get("RAY_ADDRESS")))


def storage_root(study: spaces.Study, out: Path) -> str:
    """Where Tune and Train keep trial checkpoints: ``run.storage_path`` (a folder every node
    mounts, or ``s3://...``: Ray needs shared storage for multi-node runs), else ``<output>/ray``."""
    given = study.config["run"]["storage_path"]
    if not given:
        return str(out / "ray")
    return given.rstrip("/") if "://" in given else str(Path(given).expanduser().resolve())


def experiment_path(out: Path, study: spaces.Study, parent_id: str) -> str:
    """Ray Tune's folder of one search (one MLflow parent run): what ``--resume`` restores."""
    return f"{storage_root(study, out)}/{study.name}-{parent_id[:12]}"


def run_search(study: spaces.Study, prepared, out: Path, uri: str, exp_id: str, parent_id: str,
               resume: bool = False, train: Callable | None = None, limit: int | None = None,
               console: str = "normal", callbacks: tuple = ()):
    """Ray Tune over the study's trials. ``train`` replaces ``trainables.loop.train`` in every
    trial (same signature; everything around it is the platform's): benchmarks/scheduling.py
    runs a trivial one to measure the search's own bookkeeping; such a function gets no device
    (``trainables.trial``). ``callbacks``: more Tune callbacks for a new search (a resumed one
    keeps those it was started with): benchmarks/scale.py's readings."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from platform import schedulers
    from platform.console import TrialLines, tune_verbosity
    from platform.searcher import BestEpochOptunaSearch, sampler
    from trainables.trial import run_trial

    limit = trial_limit(study, out) if limit is None else limit
    cfg = study.config
    metric, mode = cfg["objective"]["metric"], cfg["objective"]["mode"]  # the primary: ASHA stops on it
    objs = spaces.objectives(cfg)
    s = cfg["search"]
    optuna_args = dict(
        space=spaces.DefineByRun(study.params),
        configs=spaces.SampleToConfig(study.params),
        # several objectives: Optuna's multi-objective TPE over all of them (a Pareto front)
        metric=[m for m, _ in objs] if len(objs) > 1 else metric,
        mode=[d for _, d in objs] if len(objs) > 1 else mode,
        sampler=sampler(s),
        study_name=optuna_study_name(study, parent_id),
        record=optuna_storage_url(study, out),  # the sampler's study is in memory (platform/searcher.py)
    )
    budget = cfg["budget"]["max_trainable_params"]
    if budget is None and not any(p.path[:2] == ("lora", "placement") for p in study.params):
        searcher = BestEpochOptunaSearch(**optuna_args)
    else:  # over-budget (or unbuildable) samples are rejected in the driver and never become trials
        from platform.budget import BudgetedOptunaSearch, ParameterCounter

        searcher = BudgetedOptunaSearch(**optuna_args, budget=budget, counter=ParameterCounter(prepared.config))
    scheduler = schedulers.build(s["scheduler"], cfg["train"]["epochs"])
    if schedulers.pauses_trials(s["scheduler"]):
        # Paused trials count against the ConcurrencyLimiter, so it allows every trial; Tune's own
        # cap on pending trials (its documented variable, read when the search starts; 1 is its
        # default for a searcher without a limiter) keeps the sampler one trial ahead of what
        # runs, so TPE learns from the trials before. Paused trials hold no resources: the
        # direct executor (spaces.py) queues on them.
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = "1"
        limit = s["num_samples"]
    payload = {
        "name": study.name,
        "config": {k: v for k, v in prepared.config.items() if k != "search"},  # each trial's sample goes over it
        "tracking": {"uri": uri, "experiment_id": exp_id, "parent_id": parent_id},
        "storage_path": storage_root(study, out),
        "train_fn": train,
        # a trial that Tune ends closes its own run, off the driver (1.5 s of its closing at 200
        # trials, benchmarks/scheduling.py); a paused trial is not ended and must stay open
        "close_when_ended": not schedulers.pauses_trials(s["scheduler"]),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, study=payload),
                                    trial_resources(cfg["resources"], TRIAL_FUNCTION_CPU))
    path = experiment_path(out, study, parent_id)
    root, name = path.rsplit("/", 1)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise RankhouseError(f"{path}: no Ray Tune state to resume (the search died before its first trial); "
                                 f"start it again without --resume")
        # finished trials are kept, unfinished and errored ones continue from their checkpoints;
        # the searcher (with its Optuna study in SQLite) and the scheduler come back from the state
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True).fit()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=limit), scheduler=scheduler,
            num_samples=s["num_samples"], metric=metric, mode=mode,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            # a finished trial's process runs the next trial: a new one would import torch, PEFT
            # (transformers), demucs and MLflow again, ~7-10 s on 2 cores (benchmarks/trial_overhead.py)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=root, verbose=tune_verbosity(console),
            callbacks=([TrialLines(study, metric, mode)] if console == "normal" else []) + list(callbacks),
            # retried at one level only: here for the direct executor, by Ray Train for the train executor
            failure_config=tune.FailureConfig(
                max_failures=cfg["resources"]["max_failures"] if executor(cfg["resources"]) == "direct" else 0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    return tuner.fit()


def close_child_runs(study: spaces.Study, results, uri: str, exp_id: str, parent_id: str) -> None:
    """Give every trial's run left open its final status. Tune ends a trial function at a report
    when the scheduler stops it or it reaches its last epoch; a direct trial then closes its own
    run (``trainables.trial``), but not one whose process Tune shut down first, nor a trial of
    the ``train`` executor or of a scheduler that pauses trials."""
    mlflow = tracking.client(uri)
    tune_trials = {Path(r.path).name.removeprefix("trial_"): r for r in results}
    for run in tracking.children(mlflow, exp_id, parent_id, status="RUNNING"):
        result = tune_trials.get(run.data.tags.get(tags.TRIAL_ID))
        if result is None:
            # started just before a killed driver could save it in Tune's state: --resume does not
            # know it (it had no checkpoint) and samples a new trial in its place
            mlflow.set_tag(run.info.run_id, tags.LOST, "lost with a killed driver before Tune saved it; replaced")
            mlflow.set_terminated(run.info.run_id, status="KILLED")
            continue
        epochs = len(land_last_report(mlflow, run.info.run_id, result.metrics or {}, study.config["objective"]))
        if result.error is not None:
            tracking.fail_run(mlflow, run.info.run_id, result.error)
        else:
            tracking.end_run(mlflow, run.info.run_id, complete=epochs >= study.config["train"]["epochs"])


def land_last_report(mlflow, run_id: str, last: dict, objective: dict) -> dict[int, float]:
    """The run's {epoch: objective}, with the trial's last report to Tune logged if it is missing.
    A trial writes an epoch's metrics asynchronously and waits for them before its next report
    (``trainables.trial``); one that Tune ended has had no next report, and its last write may
    still be in flight, or lost with its process. Tune has the result, so it is logged from there
    (should the trial's own write land after all, ``tracking.epochs`` counts the step once)."""
    from trainables import objective as objectives

    metric, logged = objective["metric"], tracking.epochs(mlflow, run_id, objective["metric"])
    if "epoch" not in last or int(last["epoch"]) in logged:
        return logged
    epoch, value = int(last["epoch"]), last.get(metric)
    # the keys the trial logs (Tune adds its own: time, iteration, host), known from earlier epochs
    keys = set(mlflow.get_run(run_id).data.metrics) | {tracking.key(metric), "epoch"}
    better = objectives.better(value, objectives.best(logged.values(), objective["mode"]), objective["mode"])
    tracking.log_metrics(mlflow, run_id, {k: v for k, v in last.items() if tracking.key(k) in keys}, step=epoch,
                         run_tags={tags.BEST_EPOCH: epoch} if better else None)
    return {**logged, epoch: value}


def search(args, console: str) -> tuple[spaces.Study, dict, object, dict, str]:
    """The search itself, up to its closing table: (study, summary, prepared, plots, uri)."""
    study = spaces.load(args.space, args.overrides)
    out = output_dir(study)
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(study, out)
    database.check(study.config["tracking"]["backend"], str(study.file),
                   trials_elsewhere=bool(os.environ.get("RAY_ADDRESS")) and not study.config["tracking"]["uri"])
    if args.resume:
        stopped = stop_stale_ray(out)
        if stopped:
            print(f"resume: stopped {stopped} process(es) of the Ray the killed driver had started")
    if not os.environ.get("RAY_ADDRESS"):  # a local Ray has at most this machine: refuse before any work
        import torch

        refuse_unfit(study, os.cpu_count() or 1, torch.cuda.device_count())
    prepared = prepare(study)
    limit = trial_limit(study, out)  # Ray's own count; a search it refuses has created no run yet
    experiment, exp_id, parent_id = resume_parent(uri, study) if args.resume else start_parent(uri, study, prepared, out)
    metric = study.config["objective"]["metric"]
    print(f"tracking: {tracking.redact(uri)}\nexperiment: {experiment}\nparent run: {parent_id}\n{browse(uri, exp_id, parent_id)}")
    print(f"base: {prepared.base_identity['name']} ({(prepared.base_identity['sha256'] or '')[:12]}) "
          f"{metric} = {prepared.base_metrics.get(metric, float('nan')):.3f}")
    for name, scores in prepared.baselines.items():
        print(f"baseline {name}: {metric} = {scores.get(metric, float('nan')):.3f}")
    mlflow = tracking.client(uri)
    try:
        results = run_search(study, prepared, out, uri, exp_id, parent_id, resume=args.resume, limit=limit,
                             console=console)
    except BaseException:
        mlflow.set_terminated(parent_id, status="FAILED")
        raise
    close_child_runs(study, results, uri, exp_id, parent_id)
    summary = summarize(study, results, prepared, uri, experiment, exp_id, parent_id)
    from platform.budget import rejected  # imports Ray Tune, which run_search has already loaded

    summary["rejected"] = rejected(optuna_storage_url(study, out), optuna_study_name(study, parent_id))
    if summary["rejected"]:
        mlflow.log_metric(parent_id, "rejected_samples", len(summary["rejected"]))
    # plots never fail a search: one that cannot be made is a printed note and a parent-run tag
    plots = report.study_plots(summary, uri, parent_id, optuna_storage_url(study, out), optuna_study_name(study, parent_id),
                               out / "plots")
    summary["plots"] = {k: str(v) if isinstance(v, Path) else f"skipped: {v}" for k, v in plots.items()}
    if summary["best"]:
        mlflow.set_tag(parent_id, tags.BEST_RUN, summary["best"]["run_id"])
        mlflow.log_metric(parent_id, tracking.key(f"best/{metric}"), summary["best"]["best"])
    if "pareto" in summary:  # filterable in the MLflow UI: tags.`rankhouse.pareto` = 'true'
        for t in summary["pareto"]:
            mlflow.set_tag(t["run_id"], tags.PARETO, "true")
        mlflow.log_metric(parent_id, "pareto_size", len(summary["pareto"]))
    mlflow.set_tag(parent_id, "mlflow.note.content", markdown(summary))  # the run page's description
    mlflow.set_terminated(parent_id, status="FINISHED")
    return study, summary, prepared, plots, uri


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", type=Path, help="search-space YAML, e.g. search_spaces/techhouse.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search.num_samples=4 train.epochs=2")
    p.add_argument("--json", type=Path, help="write the summary here")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only the closing table (and errors)")
    shown.add_argument("--verbose", action="store_true", help="print Ray Tune's own status tables instead of a "
                                                               "line per trial event")
    p.add_argument("--resume", action="store_true",
                   help="continue the study's latest search after its driver died: finished trials are kept, "
                        "unfinished ones resume from their checkpoints, in the same MLflow runs")
    args = p.parse_intermixed_args(argv)  # flags may come after the overrides, or between them

    local_only()  # before anything imports Ray
    console = "quiet" if args.quiet else "verbose" if args.verbose else "normal"
    # --quiet: what the search says on the way is dropped; errors (stderr) and the closing table stay
    with contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext():
        study, summary, prepared, plots, uri = search(args, console)
    metric = study.config["objective"]["metric"]
    print_table(summary)
    print_pareto(summary)
    if summary["best"]:
        b = summary["best"]
        print(f"\nbest: trial {b['trial_id']} {metric} = {b['best']:.3f} "
              f"(base {prepared.base_metrics.get(metric, float('nan')):.3f}); adapter {b['adapter']}")
        # the objective's breakdown (separation: per source), as the task names it: metric/part
        gains = {k.removeprefix(f"{metric}/"): v - prepared.base_metrics[k] for k, v in b["metrics"].items()
                 if k.startswith(f"{metric}/") and k in prepared.base_metrics}
        if gains:
            unit = study.task.metrics(study.config)[metric].unit
            print(f"best vs base, per part of {metric} ({unit + ', ' if unit else ''}the trial's last epoch): "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in gains.items()))
    made = [p for p in plots.values() if isinstance(p, Path)]
    if made:
        print(f"plots: {', '.join(p.name for p in made)} in {made[0].parent} (parent run artifacts: plots/)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
        print(f"summary: {args.json}")
    print(browse(uri, summary["experiment_id"], summary["parent_run_id"]))
    return 0 if summary["best"] else 1


if __name__ == "__main__":
    cli.run(main)
