"""MLflow helpers shared by the driver (study parent run) and the trial workers (child runs).

One parent run per study, one child run per trial. A trial's child run is created once, by
the Tune trial function, and found again by its ``rankhouse.trial_id`` tag when the trial is
retried or the study resumed, so a trial never has two runs. Only rank 0 of a trial logs.
"""

from __future__ import annotations

import functools
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable

from trainables import tags

_BAD = re.compile(r"[^\w\-. /:]")


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . space / : only; glob stars become ALL."""
    return _BAD.sub("_", name.replace("*", "ALL").replace("?", "ANY").replace('"', ""))


def redact(text: str) -> str:
    """A URL's password masked (postgresql://user:secret@host -> postgresql://user:***@host):
    URIs are printed and logged as parameters."""
    return re.sub(r"(://[^:/@\s]+):[^@/\s]*@", r"\1:***@", text)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, name))
        else:
            out[name] = v
    return out


def log_params(mlflow, run_id: str, params: dict[str, Any], run_tags: dict[str, str] | None = None) -> None:
    """Params (and tags) in as few of MLflow's batches as its limits allow: each batch is one
    round trip and one commit to the store."""
    from mlflow.entities import Param

    items = [Param(key(k)[:250], redact(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, max(len(items), 1), 100):  # MLflow's batch limit
        mlflow.log_batch(run_id, params=items[i:i + 100], tags=_run_tags(run_tags) if i == 0 else [])


def log_metrics(mlflow, run_id: str, metrics: dict[str, float], step: int,
                run_tags: dict[str, str] | None = None, wait: bool = True) -> Future | None:
    """One batch of metrics (and tags). ``wait=False`` hands it to this process's writer thread
    and returns its Future: ``.result()`` waits until it is in the store and raises the write's
    error if it failed. Writes handed over run in order, one at a time."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key(k), float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    if wait:
        mlflow.log_batch(run_id, metrics=items, tags=_run_tags(run_tags))
        return None
    return _writer().submit(mlflow.log_batch, run_id, metrics=items, tags=_run_tags(run_tags))


@functools.cache
def _writer() -> ThreadPoolExecutor:
    """The writer thread of ``log_metrics(wait=False)``. Not MLflow's asynchronous logger: ending a
    run (``set_terminated``) shuts that logger down and joins its thread, which notices only
    when its queue's 1-s poll runs out: ~0.9 s of every trial that closes its own run
    (benchmarks/scheduling.py). At exit Python finishes the writes handed to this thread."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankhouse-mlflow-writer")


def _run_tags(run_tags: dict[str, Any] | None) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in (run_tags or {}).items()]


def child_run(mlflow, experiment_id: str, parent_id: str, study: str, trial_id: str,
              trial_name: str) -> tuple[str, str | None]:
    """The trial's child run, found by tag if it exists (retry/resume), created otherwise:
    (run id, the status it had when found; None when created now)."""
    found = mlflow.search_runs([experiment_id], filter_string=(
        f"tags.`{tags.PARENT}` = '{parent_id}' and tags.`{tags.TRIAL_ID}` = '{trial_id}'"), max_results=1)
    if found:
        run_id, status = found[0].info.run_id, found[0].info.status
        if status != "FINISHED":  # a finished trial is never reopened (see trial.run_trial)
            mlflow.update_run(run_id, status="RUNNING")
            if tags.STOPPED_BY in found[0].data.tags:  # closed when Tune ended it, and it goes on after all
                mlflow.delete_tag(run_id, tags.STOPPED_BY)
        return run_id, status
    run = mlflow.create_run(experiment_id, run_name=trial_name,
                            tags={tags.PARENT: parent_id, tags.STUDY: study, tags.TRIAL_ID: trial_id})
    return run.info.run_id, None


def end_run(mlflow, run_id: str, complete: bool) -> None:
    """Close a trial's run that trained to its end or that Tune ended at a report: FINISHED when
    it trained every epoch, else KILLED and tagged as the scheduler's stop. The trial does it
    itself when it can (``trial.run_trial``, ``trial._run_loop``), the driver for the runs left
    open (``platform.tune``)."""
    if complete:
        mlflow.set_terminated(run_id, status="FINISHED")
    else:
        mlflow.set_tag(run_id, tags.STOPPED_BY, "scheduler")
        mlflow.set_terminated(run_id, status="KILLED")


def fail_run(mlflow, run_id: str, error: object) -> None:
    """Close a trial's run whose training failed: FAILED, with the error on one line as its
    ``rankhouse.failure`` tag, cut to 4,000 characters. MLflow cuts a tag value over 8,000 with a
    warning, or refuses it where ``MLFLOW_TRUNCATE_LONG_VALUES=false``: a long traceback must not
    make the close itself fail."""
    mlflow.set_tag(run_id, tags.FAILURE, " ".join(str(error).split())[:4000])
    mlflow.set_terminated(run_id, status="FAILED")


def epochs(mlflow, run_id: str, metric: str) -> dict[int, float]:
    """{epoch: value} of a run's metric; a step logged twice (a retried epoch) counts once."""
    return {m.step: m.value for m in sorted(mlflow.get_metric_history(run_id, key(metric)), key=lambda m: m.timestamp)}


def children(mlflow, experiment_id: str, parent_id: str, status: str | None = None) -> Iterable:
    """The parent's child runs (only those in ``status``, if given: the store filters them, so
    the runs that are not wanted are never loaded with their params and tags)."""
    only = f" and attributes.status = '{status}'" if status else ""
    return mlflow.search_runs([experiment_id], filter_string=f"tags.`{tags.PARENT}` = '{parent_id}'{only}",
                              max_results=10_000)
