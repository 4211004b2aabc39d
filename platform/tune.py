"""``python -m platform.tune SPACE.yaml [key=value ...] [--json SUMMARY.json]``: search LoRA configurations.

Ray Tune samples configurations with Optuna (TPE, multivariate, define-by-run; the study kept
in SQLite) and stops weak trials early with ASHA; each trial is a Ray Train job running
``trainables.loop``; MLflow gets a parent run for the study and a child run per trial.
Everything that can be wrong with the inputs is checked before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
from pathlib import Path
from typing import Callable

from platform import pareto, report, spaces
from platform import cli
from platform.preflight import prepare
from trainables import objective, tags, tracking
from trainables.errors import RankhouseError
from trainables.trial import executor, trial_resources

# Ray Train V2 polls its workers every 2 s by default; on a short trial that is most of the
# overhead (see benchmarks/trial_overhead.py). Users may still override these.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
           # trials keep the driver's working directory (every path they get is absolute anyway)
           "RAY_CHDIR_TO_TRIAL_DIR": "0"}
TRIAL_FUNCTION_CPU = 0.01  # Ray refuses 0; with the train executor the trial function only waits


def output_dir(study: spaces.Study) -> Path:
    return Path(study.config["tracking"]["output"] or Path("runs") / study.name).resolve()


def tracking_uri(study: spaces.Study, out: Path) -> str:
    """The study's MLflow store. Relative SQLite paths are made absolute: trials run elsewhere."""
    uri = study.config["tracking"]["uri"] or f"sqlite:///{out / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def optuna_storage_url(out: Path) -> str:
    return f"sqlite:///{out / 'optuna.db'}"


def optuna_study_name(study: spaces.Study, parent_id: str) -> str:
    """One Optuna study per MLflow parent run: a new search never learns from an old one."""
    return f"{study.name}-{parent_id}"


def latest_parent(client, study: spaces.Study, uri: str) -> tuple[str, object]:
    """(experiment id, run) of the study's most recent search."""
    name = study.config["tracking"]["experiment"] or study.name
    exp = client.get_experiment_by_name(name)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tags.STUDY}` = '{study.name}'",
        order_by=["attributes.start_time DESC"], max_results=1000)
    parents = [r for r in runs if tags.PARENT not in r.data.tags]
    if not parents:
        raise RankhouseError(f"{study.file}: no search of study {study.name!r} in {uri}; "
                             f"run python -m platform.tune {study.file} first")
    return parents[0].info.experiment_id, parents[0]


def resume_parent(uri: str, study: spaces.Study) -> tuple[str, str, str]:
    """The parent run of the study's latest search, if it did not finish: reopened for --resume."""
    mlflow = tracking.client(uri)
    exp_id, parent = latest_parent(mlflow, study, uri)
    if parent.info.status == "FINISHED":
        raise RankhouseError(f"{study.file}: the latest search of {study.name!r} (parent run {parent.info.run_id}) "
                             "finished; nothing to resume (run it again without --resume for a new search)")
    pid = parent.info.run_id
    resumes = int(parent.data.tags.get(tags.RESUMES, "0")) + 1
    mlflow.update_run(pid, status="RUNNING")
    mlflow.set_tag(pid, tags.RESUMES, str(resumes))
    return mlflow.get_experiment(exp_id).name, exp_id, pid


SESSION_FILE = "ray-session.json"
OWNER_VAR = "RANKHOUSE_RAY_OWNER"  # in the environment of every process a local Ray of ours starts


def mark_ray_owner(out: Path) -> None:
    """Before a local Ray starts: a token every process it starts inherits, kept in the study
    folder so a --resume after a killed driver can stop exactly what that driver's Ray left
    running. Ray retitles its processes (command lines cannot tell whose they are), and its
    dashboard and runtime-env agents, which outlive a SIGKILLed driver, also overwrite their
    environment: ``record_ray_processes`` notes those by pid and start time once Ray is up."""
    if os.environ.get("RAY_ADDRESS"):
        return  # a cluster's Ray is not ours to stop
    token = f"{out}:{os.getpid()}:{os.urandom(4).hex()}"
    os.environ[OWNER_VAR] = token
    (out / SESSION_FILE).write_text(json.dumps({"owner": token, "driver": os.getpid()}))


def _start_time(pid: int) -> str | None:
    try:  # field 22 of /proc/PID/stat, after the parenthesised command name
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError):
        return None


def running(pid: int, started: str | None) -> bool:
    """The process ``pid`` that started at ``started`` still runs (a zombie does not: an orphan
    whose reaper does not reap keeps its /proc entry)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and started is not None and _start_time(pid) == started


def _parent(pid: int) -> int | None:
    try:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("PPid:"))
        return int(line.split()[1])
    except (OSError, StopIteration):
        return None


def record_ray_processes(out: Path) -> None:
    """Once our local Ray is up: its processes and their children (the agents), by pid and start time."""
    record = out / SESSION_FILE
    if os.environ.get("RAY_ADDRESS") or not record.is_file():
        return
    info = json.loads(record.read_text())
    info["processes"] = ray_processes(info["owner"])
    record.write_text(json.dumps(info))


def ray_processes(token: str) -> list[list]:
    """[pid, start time] of the processes carrying ``token`` and of their children (the agents)."""
    owned = set(owned_by(token))
    children = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) in owned}
    return [[pid, _start_time(pid)] for pid in sorted(owned | children) if pid != os.getpid()]


def stale_ray_processes(out: Path) -> list[int]:
    """Live processes of the local Ray a previous driver of this study started."""
    record = out / SESSION_FILE
    if not record.is_file():
        return []
    info = json.loads(record.read_text())
    found = set(owned_by(info["owner"]))
    found |= {pid for pid, started in info.get("processes", []) if running(pid, started)}
    return sorted(found - {os.getpid()})


def stop_stale_ray(out: Path) -> int:
    """Stop the processes of the local Ray a killed driver of this study started; returns how many."""
    import signal
    import time

    record = out / SESSION_FILE
    if not record.is_file():
        return 0
    info = json.loads(record.read_text())
    if _alive(info.get("driver")):
        raise RankhouseError(f"{out}: the search's driver (pid {info['driver']}) is still running; "
                             "stop it before --resume")
    stale = stale_ray_processes(out)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in stale:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGTERM and stale:
            time.sleep(2)
    record.unlink()
    return len(stale)


def owned_by(token: str) -> list[int]:
    """Processes whose environment carries ``token``."""
    mark = f"{OWNER_VAR}={token}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_parent(uri: str, study: spaces.Study, prepared, out: Path) -> tuple[str, str, str]:
    mlflow = tracking.client(uri)
    if uri.startswith("sqlite:///"):
        # several trial processes write to one SQLite file: WAL lets readers and one writer overlap
        with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
            db.execute("PRAGMA journal_mode=WAL")
    name = study.config["tracking"]["experiment"] or study.name
    exp = mlflow.get_experiment_by_name(name)
    # artifacts beside the store (MLflow's default is ./mlruns of whatever the cwd is)
    artifacts = (out / "artifacts").as_uri() if uri.startswith("sqlite:") else None
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(name, artifact_location=artifacts)
    parent = mlflow.create_run(exp_id, run_name=f"{study.name}-study", tags={tags.STUDY: study.name,
                                                                             tags.SPACE: str(study.file)})
    pid = parent.info.run_id
    tracking.log_params(mlflow, pid, {**tracking.flatten({k: v for k, v in prepared.config.items()
                                                            if k not in ("search",)}),
                                      "base.name": prepared.base_identity["name"],
                                      "base.sha256": prepared.base_identity["sha256"]})
    tracking.log_metrics(mlflow, pid, {f"base/{k}": v for k, v in prepared.base_metrics.items()}, step=0)
    mlflow.log_artifact(pid, str(study.file))
    return name, exp_id, pid


def concurrency(study: spaces.Study, total_cpus: float, total_gpus: float, autoscaling: bool = False) -> int:
    """Trials that fit side by side. With the ``train`` executor a trial's function holds a CPU
    sliver and its workers are placed later: more trials than fit would start, then wait on
    each other's workers and time out instead of queueing. So the limit is computed here.

    On a cluster (``RAY_ADDRESS``) the autoscaler may add GPU nodes that do not exist yet (node
    types scale from 0), so there a request beyond today's resources is a note, not an error."""
    r = study.config["resources"]
    cpus = TRIAL_FUNCTION_CPU + r["workers_per_trial"] * r["cpus_per_worker"] if executor(r) == "train" \
        else r["cpus_per_worker"]
    gpus = r["workers_per_trial"] * r["gpus_per_worker"]
    if (cpus > total_cpus or gpus > total_gpus) and autoscaling:
        print(f"note: a trial needs {cpus:g} CPUs and {gpus:g} GPUs, the cluster has {total_cpus:g} and "
              f"{total_gpus:g} now; trials wait for the autoscaler to add nodes")
        return study.config["search"]["max_concurrent"]
    if cpus > total_cpus or gpus > total_gpus:
        raise RankhouseError(f"{study.file}: resources: a trial needs {cpus:g} CPUs and {gpus:g} GPUs but the "
                             f"cluster has {total_cpus:g} and {total_gpus:g}; lower resources.cpus_per_worker "
                             "or resources.gpus_per_worker")
    fits = int(total_cpus // cpus)
    if gpus > 0:
        fits = min(fits, int(total_gpus // gpus))
    wanted = study.config["search"]["max_concurrent"]
    if fits < wanted:
        print(f"note: search.max_concurrent {wanted} lowered to {fits}: that many trials fit in the "
              f"cluster's {total_cpus:g} CPUs / {total_gpus:g} GPUs")
    return max(1, min(wanted, fits))


def start_ray() -> None:
    """Connect to ``RAY_ADDRESS`` (a cluster) or start a local Ray bound to 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}
    os.environ.update(env)
    address = os.environ.get("RAY_ADDRESS")
    try:
        # "local": a Ray of this search's own, never a cluster someone left running on this machine
        ray.init(address=address or "local", runtime_env={"env_vars": env},
                 log_to_driver=bool(os.environ.get("RANKHOUSE_RAY_LOGS")),
                 **({} if address else {"_node_ip_address": "127.0.0.1"}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RankhouseError(f"cannot start or reach Ray (RAY_ADDRESS={address or 'unset'}): "
                             f"{' '.join(str(exc).split())[:300]}") from None


def launch_ray(out: Path) -> None:
    """Start (or join) the search's Ray once, marking a local one as this study's own (``--resume``
    stops what a killed driver's Ray left running)."""
    import ray

    if ray.is_initialized():
        return
    mark_ray_owner(out)
    start_ray()
    record_ray_processes(out)


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
               resume: bool = False, train: Callable | None = None):
    """Ray Tune over the study's trials. ``train`` replaces ``trainables.loop.train`` in every
    trial (same signature; everything around it is the platform's): benchmarks/scheduling.py
    runs a trivial one to measure the search's own bookkeeping."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from platform.searcher import BestEpochOptunaSearch, sampler
    from trainables.trial import run_trial

    launch_ray(out)
    cfg = study.config
    metric, mode = cfg["objective"]["metric"], cfg["objective"]["mode"]  # the primary: ASHA stops on it
    objs = spaces.objectives(cfg)
    s = cfg["search"]
    resources = ray.cluster_resources()
    limit = concurrency(study, resources.get("CPU", 0), resources.get("GPU", 0),
                        autoscaling=bool(os.environ.get("RAY_ADDRESS")))
    optuna_args = dict(
        space=spaces.DefineByRun(study.params),
        # several objectives: Optuna's multi-objective TPE over all of them (a Pareto front)
        metric=[m for m, _ in objs] if len(objs) > 1 else metric,
        mode=[d for _, d in objs] if len(objs) > 1 else mode,
        sampler=sampler(s),
        study_name=optuna_study_name(study, parent_id),
        record=optuna_storage_url(out),  # the sampler's study is in memory (platform/searcher.py)
    )
    budget = cfg["budget"]["max_trainable_params"]
    if budget is None and not any(p.path[:2] == ("lora", "placement") for p in study.params):
        searcher = BestEpochOptunaSearch(**optuna_args)
    else:  # over-budget (or unbuildable) samples are rejected in the driver and never become trials
        from platform.budget import BudgetedOptunaSearch, ParameterCounter

        counter = ParameterCounter(prepared.config, {p.key: list(p.path) for p in study.params})
        searcher = BudgetedOptunaSearch(**optuna_args, budget=budget, counter=counter)
    sch = s["scheduler"]
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg["train"]["epochs"],
                               grace_period=sch["grace_period"], reduction_factor=sch["reduction_factor"])
                 if sch["type"] == "asha" else FIFOScheduler())
    payload = {
        "name": study.name,
        "config": {k: v for k, v in prepared.config.items() if k != "search"},
        "paths": {p.key: list(p.path) for p in study.params},
        "tracking": {"uri": uri, "experiment_id": exp_id, "parent_id": parent_id},
        "storage_path": storage_root(study, out),
        "train_fn": train,
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
            name=name, storage_path=root, verbose=1,
            # retried at one level only: here for the direct executor, by Ray Train for the train executor
            failure_config=tune.FailureConfig(
                max_failures=cfg["resources"]["max_failures"] if executor(cfg["resources"]) == "direct" else 0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    return tuner.fit()




def close_child_runs(study: spaces.Study, results, uri: str, exp_id: str, parent_id: str) -> None:
    """Give every trial's run its final status. Tune ends a trial function that the scheduler
    stopped (or whose last report crossed Tune's stop) before it can close its own run."""
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
        epochs = len(tracking.epochs(mlflow, run.info.run_id, study.config["objective"]["metric"]))
        if result is not None and result.error is not None:
            mlflow.set_tag(run.info.run_id, tags.FAILURE, " ".join(str(result.error).split())[:4000])
            mlflow.set_terminated(run.info.run_id, status="FAILED")
        elif epochs >= study.config["train"]["epochs"]:
            mlflow.set_terminated(run.info.run_id, status="FINISHED")
        else:
            mlflow.set_tag(run.info.run_id, tags.STOPPED_BY, "scheduler")
            mlflow.set_terminated(run.info.run_id, status="KILLED")


def summarize(study: spaces.Study, results, prepared, uri: str, experiment: str, exp_id: str, parent_id: str) -> dict:
    """One row per trial from MLflow (the record users browse), with the configs Tune sampled."""
    mlflow = tracking.client(uri)
    configs = {Path(r.path).name.removeprefix("trial_"): dict(r.config) for r in results}
    metric, mode = study.config["objective"]["metric"], study.config["objective"]["mode"]
    objs = spaces.objectives(study.config)
    status_names = {"KILLED": "STOPPED"}
    trials = []
    for run in tracking.children(mlflow, exp_id, parent_id):
        if tags.LOST in run.data.tags:
            continue
        tid = run.data.tags.get(tags.TRIAL_ID)
        history = tracking.epochs(mlflow, run.info.run_id, metric)
        values = list(history.values())
        best = objective.best(values, mode)
        params = run.data.params
        best_epoch = run.data.tags.get(tags.BEST_EPOCH)
        row = {
            "trial_id": tid, "run_id": run.info.run_id,
            "status": status_names.get(run.info.status, run.info.status),
            "config": configs.get(tid, {}),
            "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith(("valid/", "train/"))},
            "best": best, "epochs": len(history),
            "trainable_params": int(params["trainable_params"]) if "trainable_params" in params else None,
            "adapter_bytes": int(params["adapter_bytes"]) if "adapter_bytes" in params else None,
            "adapter": f"runs:/{run.info.run_id}/adapter" if best_epoch else None,
            "failure": run.data.tags.get(tags.FAILURE),
        }
        if len(objs) > 1:  # every objective at the epoch whose adapter the trial kept
            row["objectives"] = {m: objective_value(mlflow, run.info.run_id, row, m, best_epoch) for m, _ in objs}
        trials.append(row)
    trials.sort(key=lambda t: objective.rank_key(t["best"], mode))
    best = next((t for t in trials if t["best"] is not None and t["adapter"]), None)
    summary = {"study": study.name, "tracking_uri": uri, "experiment": experiment, "parent_run_id": parent_id,
               "objective": {"metric": metric, "mode": mode}, "base": {"identity": prepared.base_identity,
                                                                       "metrics": prepared.base_metrics},
               "trials": trials, "best": best}
    if len(objs) > 1:
        summary["objectives"] = [{"metric": m, "mode": d} for m, d in objs]
        on_front = set(pareto.front({t["run_id"]: [t["objectives"][m] for m, _ in objs]
                                     for t in trials if t["adapter"]}, [d for _, d in objs]))
        summary["pareto"] = [t for t in trials if t["run_id"] in on_front]
    return summary


def objective_value(mlflow, run_id: str, row: dict, metric: str, best_epoch: str | None) -> float | None:
    """A trial's value of one objective: its cost (constant) or the metric at its best epoch."""
    if metric in spaces.COST_METRICS:
        return row[metric]
    if best_epoch is not None:
        return tracking.epochs(mlflow, run_id, metric).get(int(best_epoch))
    return None


def short(key: str) -> str:
    """``lora.layer_ranks."encoder.*"`` -> ``r[encoder.*]``, ``lora.placement.tencoder`` ->
    ``placed[tencoder]``, ``optim.lr`` -> ``lr``."""
    parts = spaces.split_key(key)
    if parts[:2] == ("lora", "layer_ranks"):
        return f"r[{parts[2]}]"
    return f"placed[{parts[2]}]" if parts[:2] == ("lora", "placement") else parts[-1]


def print_table(summary: dict) -> None:
    metric = summary["objective"]["metric"]
    base = summary["base"]["metrics"].get(metric)
    sources = sorted(k.removeprefix(metric + "/") for k in summary["base"]["metrics"] if k.startswith(metric + "/"))
    head = f"{'trial':<12} {'status':<9} {'ep':>3} {metric:>10} " + " ".join(f"{s[:7]:>7}" for s in sources) + "  config"
    print("\n" + head)
    print("-" * len(head))
    if base is not None:
        print(f"{'base':<12} {'':<9} {'':>3} {base:>10.3f} " + " ".join(
            f"{summary['base']['metrics'][f'{metric}/{s}']:>7.2f}" for s in sources) + "  (no adapter)")
    for t in summary["trials"]:
        best = f"{t['best']:.3f}" if t["best"] is not None else "-"
        per = " ".join(f"{t['metrics'].get(f'{metric}/{s}', float('nan')):>7.2f}" for s in sources)
        cfg = " ".join(f"{short(k)}={v:.3g}" if isinstance(v, float) else f"{short(k)}={v}"
                       for k, v in t["config"].items())
        print(f"{t['trial_id'] or '?':<12} {t['status']:<9} {t['epochs']:>3} {best:>10} {per}  {cfg}")
    print("(per-source columns: the trial's last epoch; the objective column: its best epoch)")
    for r in summary.get("rejected", []):
        cfg = " ".join(f"{short(k)}={v:.3g}" if isinstance(v, float) else f"{short(k)}={v}"
                       for k, v in r["params"].items())
        print(f"rejected before training (optuna trial {r['optuna_trial']}): {r['reason']}  {cfg}")


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_pareto(summary: dict) -> None:
    """The non-dominated trials of a multi-objective search, best primary objective first."""
    if "pareto" not in summary:
        return
    objs = summary["objectives"]
    head = f"{'trial':<12} " + " ".join(f"{o['metric'] + (' ↑' if o['mode'] == 'max' else ' ↓'):>18}" for o in objs)
    print(f"\nPareto front ({len(summary['pareto'])} of {len(summary['trials'])} trials; "
          "objectives at each trial's best epoch):")
    print(head + "  config")
    print("-" * len(head))
    for t in summary["pareto"]:
        cfg = " ".join(f"{short(k)}={v:.3g}" if isinstance(v, float) else f"{short(k)}={v}"
                       for k, v in t["config"].items())
        print(f"{t['trial_id'] or '?':<12} " + " ".join(f"{_number(t['objectives'][o['metric']]):>18}" for o in objs)
              + f"  {cfg}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", type=Path, help="search-space YAML, e.g. search_spaces/techhouse.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search.num_samples=4 train.epochs=2")
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--resume", action="store_true",
                   help="continue the study's latest search after its driver died: finished trials are kept, "
                        "unfinished ones resume from their checkpoints, in the same MLflow runs")
    args = p.parse_args(argv)

    study = spaces.load(args.space, args.overrides)
    out = output_dir(study)
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(study, out)
    if args.resume:
        stopped = stop_stale_ray(out)
        if stopped:
            print(f"resume: stopped {stopped} process(es) of the Ray the killed driver had started")
    prepared = prepare(study)
    experiment, exp_id, parent_id = resume_parent(uri, study) if args.resume else start_parent(uri, study, prepared, out)
    metric = study.config["objective"]["metric"]
    print(f"tracking: {uri}\nexperiment: {experiment}\nparent run: {parent_id}\n"
          f"browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"base: {prepared.base_identity['name']} ({(prepared.base_identity['sha256'] or '')[:12]}) "
          f"{metric} = {prepared.base_metrics.get(metric, float('nan')):.3f}")
    mlflow = tracking.client(uri)
    try:
        results = run_search(study, prepared, out, uri, exp_id, parent_id, resume=args.resume)
    except BaseException:
        mlflow.set_terminated(parent_id, status="FAILED")
        raise
    close_child_runs(study, results, uri, exp_id, parent_id)
    summary = summarize(study, results, prepared, uri, experiment, exp_id, parent_id)
    from platform.budget import rejected  # imports Ray Tune, which run_search has already loaded

    summary["rejected"] = rejected(optuna_storage_url(out), optuna_study_name(study, parent_id))
    if summary["rejected"]:
        mlflow.log_metric(parent_id, "rejected_samples", len(summary["rejected"]))
    # plots never fail a search: one that cannot be made is a printed note and a parent-run tag
    plots = report.study_plots(summary, uri, parent_id, optuna_storage_url(out), optuna_study_name(study, parent_id),
                               out / "plots")
    summary["plots"] = {k: str(v) if isinstance(v, Path) else f"skipped: {v}" for k, v in plots.items()}
    if summary["best"]:
        mlflow.set_tag(parent_id, tags.BEST_RUN, summary["best"]["run_id"])
        mlflow.log_metric(parent_id, tracking.key(f"best/{metric}"), summary["best"]["best"])
    if "pareto" in summary:  # filterable in the MLflow UI: tags.`rankhouse.pareto` = 'true'
        for t in summary["pareto"]:
            mlflow.set_tag(t["run_id"], tags.PARETO, "true")
        mlflow.log_metric(parent_id, "pareto_size", len(summary["pareto"]))
    mlflow.set_terminated(parent_id, status="FINISHED")
    print_table(summary)
    print_pareto(summary)
    if summary["best"]:
        b = summary["best"]
        print(f"\nbest: trial {b['trial_id']} {metric} = {b['best']:.3f} "
              f"(base {prepared.base_metrics.get(metric, float('nan')):.3f}); adapter {b['adapter']}")
        gains = {k.removeprefix("valid/sdr/"): v - prepared.base_metrics[k] for k, v in b["metrics"].items()
                 if k.startswith("valid/sdr/") and k in prepared.base_metrics}
        if gains:
            print("best vs base, per source (dB, the trial's last epoch): "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in gains.items()))
    made = [p for p in plots.values() if isinstance(p, Path)]
    if made:
        print(f"plots: {', '.join(p.name for p in made)} in {made[0].parent} (parent run artifacts: plots/)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
        print(f"summary: {args.json}")
    print(f"browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return 0 if summary["best"] else 1


if __name__ == "__main__":
    cli.run(main)
