"""How far one driver goes: the platform's real search over 1,000 trials on a simulated cluster.

The cluster: ``--nodes`` Ray nodes on this machine's loopback addresses (127.0.0.2, .3, ...),
with token authentication, each declaring ``--gpus-per-node`` logical GPUs that no CUDA stands
behind (64 in all by default). The search: ``platform.tune.run_search`` over the flagship space
(TPE, multivariate, and ASHA, as shipped), each trial holding ``--gpu-per-trial`` GPU and running
``benchmarks.scheduling.synthetic_train``, which sleeps ``--epoch-ms`` per epoch and reports a
synthetic objective and a small adapter, for up to ``--epochs`` epochs. Everything around that
function is the platform's: the trial's MLflow run, its params and per-epoch metrics, the best
epoch's adapter artifact, Optuna's record of each finished trial, the console's line per event.

At 100, 300 and 1,000 finished trials the driver's CPU is read per thread (``/proc``) and split:

  sampler   the searcher's calls on Tune's thread: Optuna's ask (TPE) and tell, the reports
            ASHA's pruning sees, queueing a finished trial for the record
  Tune      the rest of Tune's event loop on the main thread (scheduler, trial bookkeeping,
            saving its state, the console's lines)
  record    the thread that copies each finished trial to the Optuna record (SQL)
  other     the driver's other threads (Ray's client: gRPC, the core worker)

with trials/min, Tune results/s, MLflow records written/s (runs, params, tags, metric values)
and the driver's RSS. The machine's CPU is split too: the driver, the trial processes, Ray's
daemons (raylets, GCS, agents) and the rest (the store's servers). The default searches: the
MLflow store in SQLite, then behind an MLflow server over PostgreSQL (as ``cluster.yaml`` runs
it; a throwaway local PostgreSQL, or ``--postgres URL``), both with one-minute trials.
``--fast-epoch-ms 250`` adds a SQLite search with trials as short as this machine can run.

    .venv/bin/python -m benchmarks.scale                         (from the repository root; ~35 min)
    .venv/bin/python -m benchmarks.scale --trials 120 --marks 40 120 --backends sqlite   (a quick look)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat: Path) -> float:
    """utime + stime of a /proc stat file (fields 14 and 15, after the parenthesised name)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process: all of it (ended threads too), the main thread's and the
    record thread's (platform/searcher.py names it; Python does not pass the name to the OS)."""
    record = {t.native_id for t in threading.enumerate() if t.name == "optuna-record"}
    main, main_cpu, record_cpu = threading.main_thread().native_id, 0.0, 0.0
    for tid in record | {main}:
        try:
            seconds = cpu_seconds(Path(f"/proc/self/task/{tid}/stat"))
        except OSError:
            continue
        if tid == main:
            main_cpu = seconds
        else:
            record_cpu += seconds
    return {"all": time.process_time(), "main": main_cpu, "record": record_cpu}


AGENTS = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}  # titled like workers (ray_constants.AGENT_PROCESS_LIST)


class ClusterMonitor:
    """The CPU seconds of the cluster's processes, read every second on a thread of its own, so
    that a trial process that exits (Tune ends unused ones) keeps what it spent until its last
    reading. ``trial`` kind: Ray's workers (titled ray::...); ``daemon``: the rest (raylets, GCS,
    agents). What the benchmark itself spends in the driver is kept apart from the driver's: the
    monitor's thread (``cpu``) and the snapshots on Tune's thread (``snapshots``)."""

    def __init__(self, owner: str):
        self.owner, self.cpu, self.snapshots, self.seen, self.pids = owner, 0.0, 0.0, {}, []
        self._read(find=True)  # the first reading before the first snapshot: older CPU is not the search's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-monitor", daemon=True)
        self._thread.start()

    def totals(self) -> dict[str, float]:
        seen = dict(self.seen)
        return {kind: sum(cpu for k, cpu in seen.values() if k == kind) for kind in ("trial", "daemon")}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _read(self, find: bool) -> None:
        from platform.ray_session import ray_processes

        started = time.thread_time()
        if find:  # finding the processes scans every environment in /proc: not every second
            self.pids = [pid for pid, _ in ray_processes(self.owner)]
        for pid in self.pids:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                self.seen[pid] = ("trial" if title.startswith("ray::") and title not in AGENTS else "daemon",
                                  cpu_seconds(Path(f"/proc/{pid}/stat")))
            except OSError:
                continue
        self.cpu += time.thread_time() - started

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(1.0):
            tick += 1
            self._read(find=tick % 5 == 0)


def machine_busy() -> float:
    """CPU seconds this machine's cores have been busy: user, nice, system, irq, softirq (steal
    is another machine's; guest time is inside user already)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[0:3]) + sum(values[5:7])) / TICK


def rss_mib() -> float:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


class SamplerClock:
    """Thread CPU spent in the searcher's calls, on Tune's thread."""

    def __init__(self):
        self.seconds = 0.0
        self.originals: list[tuple] = []

    def unwrap(self) -> None:
        for cls, name, original in self.originals:
            setattr(cls, name, original)

    def wrap(self, cls, names: tuple[str, ...]) -> None:
        for name in names:
            original = getattr(cls, name)
            self.originals.append((cls, name, original))

            def timed(searcher, *args, _original=original, **kwargs):
                started = time.thread_time()
                try:
                    return _original(searcher, *args, **kwargs)
                finally:
                    self.seconds += time.thread_time() - started

            setattr(cls, name, timed)


def snapshot(store: str, monitor: ClusterMonitor, sampler: SamplerClock, finished: int, results: int) -> dict:
    """The readings at a mark. Taken on Tune's thread: its own CPU is counted apart."""
    from benchmarks.scheduling import mlflow_records

    started = time.thread_time()
    cpu = thread_cpu()
    cpu["all"] -= monitor.cpu + monitor.snapshots
    cpu["main"] -= monitor.snapshots
    snap = {"finished": finished, "results": results, "wall": time.perf_counter(), **cpu,
            "sampler": sampler.seconds, "rss": rss_mib(), "machine": machine_busy(), **monitor.totals(),
            "records": mlflow_records(store)}
    monitor.snapshots += time.thread_time() - started
    return snap


def marks_callback(marks: list[int], snap):
    """A Tune callback: snapshots at the start, at the marks (finished or failed trials), and a
    progress line every 50. Made here, not at import: Ray reads its token settings when first imported, which
    must be after the driver has the cluster's (``main``)."""
    from ray.tune import Callback

    class Marks(Callback):
        def __init__(self, snap):  # an argument, not a closure: a closure would be pickled
            self.finished = self.results = 0
            self.snap = snap

        def __getstate__(self) -> dict:  # Tune pickles its callbacks; the monitor's thread cannot be
            return {**self.__dict__, "snap": None}

        def setup(self, **info):  # the first reading once Ray is joined and the search starts
            self.snap(0, 0)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results += 1

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            if self.finished in marks:
                self.snap(self.finished, self.results)
            if self.finished % 50 == 0:
                print(f"  {self.finished} trials finished, {self.results} results", file=sys.stderr, flush=True)

        on_trial_error = on_trial_complete

    return Marks(snap)


def run_arm(args, name: str, epoch_ms: float, url: str | None, server: str | None, cluster,
            work: Path) -> tuple[list[dict], dict]:
    """One search on the cluster (``url``: its PostgreSQL store, else SQLite; ``server``: an
    MLflow server over it that the trials and the driver log through): the snapshots at the
    marks and what the driver spends after Tune returns."""
    import ray.cloudpickle

    from benchmarks import scheduling
    from platform import database, report, spaces, study_runs, tune
    from platform.searcher import BestEpochOptunaSearch
    from platform.summary import summarize

    out = work / name.replace(" ", "-")
    overrides = [f"search.num_samples={args.trials}", f"search.max_concurrent={args.concurrent}",
                 f"train.epochs={args.epochs}", f"resources.cpus_per_worker={args.gpu_per_trial}",
                 f"resources.gpus_per_worker={args.gpu_per_trial}", f"tracking.output={out}", f"data.root={work}"]
    if url:
        overrides.append(f"tracking.backend={url}")
    if server:
        overrides.append(f"tracking.uri={server}")
    study = spaces.load(ROOT / "search_spaces" / "techhouse.yaml", overrides)
    database.check(study.config["tracking"]["backend"], f"{name} store")
    prepared = scheduling.synthetic_prepared(study, epoch_ms)
    out.mkdir(parents=True)
    uri = study_runs.tracking_uri(study, out)
    _, exp_id, parent_id = study_runs.start_parent(uri, study, prepared, out)
    ray.cloudpickle.register_pickle_by_value(scheduling)  # trial processes need not import it
    sampler, monitor = SamplerClock(), ClusterMonitor(cluster.owner)
    # the records are counted in the database itself, also when the trials log through a server
    store = database.mlflow_store(study.config["tracking"]["backend"], out)
    snaps: list[dict] = []
    marks = marks_callback(args.marks, lambda done, results: snaps.append(snapshot(store, monitor, sampler, done,
                                                                                   results)))
    print(f"{name}: {args.trials} trials on {cluster.nodes} nodes ...", file=sys.stderr, flush=True)
    try:
        sampler.wrap(BestEpochOptunaSearch, ("suggest", "on_trial_result", "on_trial_complete"))
        with open(out / "console.log", "w") as console, contextlib.redirect_stdout(console):
            results = tune.run_search(study, prepared, out, uri, exp_id, parent_id,
                                      train=scheduling.synthetic_train, callbacks=(marks,))
        if snaps[-1]["finished"] < marks.finished:  # fewer trials finished than the last mark
            snaps.append(snapshot(store, monitor, sampler, marks.finished, marks.results))
    finally:
        sampler.unwrap()
        monitor.stop()
    started, cpu = time.perf_counter(), time.process_time()
    tune.close_child_runs(study, results, uri, exp_id, parent_id)
    summary = summarize(study, results, prepared, uri, study.name, exp_id, parent_id)
    report.study_plots(summary, uri, parent_id, study_runs.optuna_storage_url(study, out),
                       study_runs.optuna_study_name(study, parent_id), out / "plots")
    after = {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "trials": len(summary["trials"]),
             "errors": sum(1 for r in results if r.error is not None), "epoch_ms": epoch_ms}
    return snaps, after


def windows(snaps: list[dict]) -> list[dict]:
    """Per window between marks: rates, and the driver's CPU per finished trial by part."""
    rows = []
    for a, b in zip(snaps, snaps[1:]):
        n, wall = b["finished"] - a["finished"], b["wall"] - a["wall"]
        d = {k: b[k] - a[k] for k in ("all", "main", "record", "sampler", "machine", "trial", "daemon")}
        rows.append({
            "window": f"{a['finished'] + 1}-{b['finished']}", "finished": b["finished"],
            "trials_min": 60 * n / wall, "results_s": (b["results"] - a["results"]) / wall,
            "records_s": (b["records"] - a["records"]) / wall,
            "ms": {"all": d["all"], "sampler": d["sampler"], "tune": d["main"] - d["sampler"], "record": d["record"],
                   "other": d["all"] - d["main"] - d["record"]},
            "n": n, "epochs": (b["results"] - a["results"]) / n,
            "driver_cores": d["all"] / wall, "machine_cores": d["machine"] / wall,
            "trial_cores": d["trial"] / wall, "daemon_cores": d["daemon"] / wall, "rss": b["rss"]})
    for r in rows:
        r["ms"] = {k: 1000 * v / r["n"] for k, v in r["ms"].items()}
    return rows


def print_tables(args, results: dict[str, tuple[list[dict], dict]]) -> None:
    gpus = args.nodes * args.gpus_per_node
    print(f"\n{args.trials} trials per search (TPE + ASHA, up to {args.epochs} epochs), {args.nodes} nodes x "
          f"{args.gpus_per_node} logical GPUs, {args.gpu_per_trial:g} GPU per trial, at most {args.concurrent} "
          "concurrent\n")
    print(f"| store, epoch | trials | trials/min | results/s | MLflow records/s | driver RSS (MiB) | cores: driver "
          f"| trial processes | Ray daemons | the rest (store servers, OS) | machine (of {os.cpu_count()}) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm, (snaps, _) in results.items():
        for r in windows(snaps):
            rest = r["machine_cores"] - r["driver_cores"] - r["trial_cores"] - r["daemon_cores"]
            print(f"| {arm} | {r['window']} | {r['trials_min']:.0f} | {r['results_s']:.1f} | {r['records_s']:.0f} "
                  f"| {r['rss']:.0f} | {r['driver_cores']:.2f} | {r['trial_cores']:.2f} | {r['daemon_cores']:.2f} "
                  f"| {rest:.2f} | {r['machine_cores']:.2f} |")
    print("\nDriver CPU per finished trial (ms):\n")
    print("| store, epoch | trials | epochs/trial | all | Tune's loop | sampler | Optuna record | other threads |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for arm, (snaps, _) in results.items():
        for r in windows(snaps):
            m = r["ms"]
            print(f"| {arm} | {r['window']} | {r['epochs']:.1f} | {m['all']:.0f} | {m['tune']:.0f} "
                  f"| {m['sampler']:.1f} | {m['record']:.0f} | {m['other']:.0f} |")
    print("\nAfter the search (closing runs, summary, plots):\n")
    print("| store, epoch | trials | errors | wall (s) | driver CPU (s) |")
    print("|---|---:|---:|---:|---:|")
    for arm, (_, after) in results.items():
        print(f"| {arm} | {after['trials']} | {after['errors']} | {after['wall']:.1f} | {after['cpu']:.1f} |")
    print("\nThe limit, from the last window. Tune's loop, the sampler and the record share one core (the GIL);\n"
          "at their CPU per trial, one core completes the trials/min below. A GPU running trials that average\n"
          f"M GPU-minutes (ASHA's stopped ones included) completes 1/M a minute, so one driver feeds\n"
          f"completions/min x M / {args.gpu_per_trial:g} GPUs. Last column: the driver's whole CPU at {gpus} "
          "completions/min.\n")
    print(f"| store, epoch | GIL-bound ms/trial | completions/min at one core | GPUs fed at 1 / 10 / 60 GPU-minutes "
          f"a trial | driver cores at {gpus}/min |")
    print("|---|---:|---:|---:|---:|")
    for arm, (snaps, _) in results.items():
        last = windows(snaps)[-1]
        m = last["ms"]
        rate = 60_000 / (m["tune"] + m["sampler"] + m["record"])
        fed = " / ".join(f"{rate * minutes / args.gpu_per_trial:.0f}" for minutes in (1, 10, 60))
        print(f"| {arm} | {60_000 / rate:.0f} | {rate:.0f} | {fed} | {gpus / 60 * m['all'] / 1000:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--marks", type=int, nargs="+", default=[100, 300, 1000], help="finished trials to measure at")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=16)
    p.add_argument("--gpu-per-trial", type=float, default=1.0, help="1 or a fraction, e.g. 0.25")
    p.add_argument("--concurrent", type=int, default=64, help="search.max_concurrent")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--epoch-ms", type=float, default=7500.0,
                   help="what one synthetic epoch sleeps (7500: a trial of 8 epochs lasts a minute)")
    p.add_argument("--backends", nargs="+", choices=["sqlite", "postgres", "server"], default=["sqlite", "server"],
                   help="postgres: the MLflow store in PostgreSQL; server: an MLflow server (4 workers, as "
                        "scripts/tracking_server.sh starts it) over it")
    # off by default: a third search would take the run past 45 min here
    p.add_argument("--fast-epoch-ms", type=float, default=0.0,
                   help="one more SQLite search with epochs this short, e.g. 250: as fast as this machine goes "
                        "(0, the default: none)")
    p.add_argument("--postgres", help="a PostgreSQL URL to use instead of a throwaway local server")
    args = p.parse_args()
    if args.marks[-1] != args.trials or sorted(args.marks) != args.marks:
        p.error("--marks must rise and end at --trials")

    from benchmarks.local_servers import MlflowServer, Postgres, initdb
    from benchmarks.loopback_cluster import LoopbackCluster

    if {"postgres", "server"} & set(args.backends) and not args.postgres and initdb() is None:
        p.error("--backends postgres and server need PostgreSQL: apt-get install postgresql, or give --postgres URL")
    work = Path(tempfile.mkdtemp(prefix="rankhouse-scale-"))
    # with 64 trials checkpointing every epoch Tune snapshots its state often, and says so each
    # time; the snapshots are part of what is measured, the warnings are not wanted on the console
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    results, failed = {}, {}
    # each node has as many logical CPUs as GPUs, and a trial as many CPUs as GPUs: GPUs decide
    # where trials go. 200 MB of object store per node: Ray's default (30% of memory) on 4 nodes
    # would claim more shared memory than this machine has
    with LoopbackCluster(work, nodes=args.nodes, cpus=args.gpus_per_node, gpus=args.gpus_per_node,
                         object_store_mb=200) as cluster:
        os.environ.update(cluster.env)  # the driver joins the cluster (platform.ray_session.start_ray)
        arms = [(backend, args.epoch_ms) for backend in args.backends]
        arms += [("sqlite", args.fast_epoch_ms)] if args.fast_epoch_ms else []
        for backend, epoch_ms in arms:
            name = f"{backend} {epoch_ms / 1000:g} s"
            try:
                with contextlib.ExitStack() as stack:
                    url = server = None
                    if backend != "sqlite":
                        url = args.postgres or stack.enter_context(Postgres()).url
                    if backend == "server":
                        server = stack.enter_context(MlflowServer(url, workers=4, artifacts=work / "artifacts")).url
                    results[name] = run_arm(args, name, epoch_ms, url, server, cluster, work)
            except Exception as exc:  # the other arms' tables are still printed
                failed[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                print(f"{name}: failed: {failed[name]}", file=sys.stderr, flush=True)
    print_tables(args, results)
    for name, reason in failed.items():
        print(f"\n{name}: failed: {reason}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n(driver peak RSS {peak:.0f} MiB; work folder {work})")


if __name__ == "__main__":
    main()
