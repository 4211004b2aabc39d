"""A study's places and runs, shared by ``platform.tune`` and ``platform.promote``: its output
folder, its MLflow store and Optuna record, and the MLflow parent run of each of its searches."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from platform import database, spaces
from trainables import tags, tracking
from trainables.errors import RankhouseError

def output_dir(study: spaces.Study) -> Path:
    return Path(study.config["tracking"]["output"] or Path("runs") / study.name).resolve()


def tracking_uri(study: spaces.Study, out: Path) -> str:
    """The study's MLflow store. Relative SQLite paths are made absolute: trials run elsewhere."""
    uri = study.config["tracking"]["uri"] or database.mlflow_store(study.config["tracking"]["backend"], out)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def optuna_storage_url(study: spaces.Study, out: Path) -> str:
    return database.optuna_record(study.config["tracking"]["backend"], out)


def optuna_study_name(study: spaces.Study, parent_id: str) -> str:
    """One Optuna study per MLflow parent run: a new search never learns from an old one."""
    return f"{study.name}-{parent_id}"


def searches(client, study: spaces.Study, uri: str) -> tuple[str, list]:
    """(experiment id, parent runs of the study's searches, the most recent first)."""
    name = study.config["tracking"]["experiment"] or study.name
    exp = client.get_experiment_by_name(name)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tags.STUDY}` = '{study.name}'",
        order_by=["attributes.start_time DESC"], max_results=1000)
    parents = [r for r in runs if tags.PARENT not in r.data.tags]
    if not parents:
        raise RankhouseError(f"{study.file}: no search of study {study.name!r} in {tracking.redact(uri)}; "
                             f"run python -m platform.tune {study.file} first")
    return parents[0].info.experiment_id, parents


def latest_parent(client, study: spaces.Study, uri: str) -> tuple[str, object]:
    """(experiment id, run) of the study's most recent search."""
    exp_id, parents = searches(client, study, uri)
    return exp_id, parents[0]


def resume_parent(uri: str, study: spaces.Study) -> tuple[str, str, str]:
    """The parent run of the study's latest search, if it did not finish: reopened for --resume."""
    mlflow = tracking.client(uri)
    exp_id, parent = latest_parent(mlflow, study, uri)
    if parent.info.status == "FINISHED":
        raise RankhouseError(f"{study.file}: the latest search of {study.name!r} (parent run {parent.info.run_id}) "
                             "finished; nothing to resume (run it again without --resume for a new search)")
    pid = parent.info.run_id
    share_view(mlflow, exp_id, pid, study)
    resumes = int(parent.data.tags.get(tags.RESUMES, "0")) + 1
    mlflow.update_run(pid, status="RUNNING")
    mlflow.set_tag(pid, tags.RESUMES, str(resumes))
    return mlflow.get_experiment(exp_id).name, exp_id, pid


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves unless told otherwise


def ui_url(uri: str, exp_id: str, parent_id: str) -> str:
    """The search's trials in the MLflow UI's model-training view. MLflow 3 opens an experiment in
    its GenAI view (traces, judges, prompts) unless the URL's ``workflowType`` asks otherwise;
    ``viewStateShareKey`` names the table ``share_view`` stored."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={parent_id}"


def share_view(mlflow, exp_id: str, parent_id: str, study: spaces.Study) -> None:
    """The search's trials as a table, stored where the UI's shared views live (an experiment
    tag): its child runs, sorted by the objective, with the objective and the searched
    parameters as columns. MLflow's own default shows neither metrics nor parameters."""
    metric, mode = study.config["objective"]["metric"], study.config["objective"]["mode"]
    params = [*study.config["search"]["space"], "trainable_params"]
    view = {"searchFilter": f"tags.mlflow.parentRunId = '{parent_id}'",
            "orderByKey": f"metrics.`{tracking.key(metric)}`", "orderByAsc": mode == "min",
            "selectedColumns": [f"metrics.`{tracking.key(metric)}`", *(f"params.`{tracking.key(p)}`" for p in params)]}
    mlflow.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{parent_id}", json.dumps(view))


def browse(uri: str, exp_id: str, parent_id: str) -> str:
    """The line that tells a user where to look."""
    if uri.startswith(("http://", "https://")):
        return f"browse: {ui_url(uri, exp_id, parent_id)}"
    return (f"browse: mlflow ui --backend-store-uri {tracking.redact(uri)} --host 127.0.0.1 --port 5000\n"
            f"        then open {ui_url(uri, exp_id, parent_id)}")


def start_parent(uri: str, study: spaces.Study, prepared, out: Path) -> tuple[str, str, str]:
    mlflow = tracking.client(uri)
    if uri.startswith("sqlite:///"):
        # several trial processes write to one SQLite file: WAL lets readers and one writer overlap
        with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
            db.execute("PRAGMA journal_mode=WAL")
    name = study.config["tracking"]["experiment"] or study.name
    exp = mlflow.get_experiment_by_name(name)
    # artifacts beside the store (MLflow's default is ./mlruns of whatever the cwd is)
    artifacts = (out / "artifacts").as_uri() if uri.startswith(("sqlite:", "postgresql")) else None
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(name, artifact_location=artifacts)
    # for UIs that read the experiment's kind rather than the URL: trials, not traces
    mlflow.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    parent = mlflow.create_run(exp_id, run_name=f"{study.name}-study", tags={tags.STUDY: study.name,
                                                                             tags.SPACE: str(study.file)})
    pid = parent.info.run_id
    share_view(mlflow, exp_id, pid, study)
    tracking.log_params(mlflow, pid, {**tracking.flatten({k: v for k, v in prepared.config.items()
                                                            if k not in ("search",)}),
                                      "base.name": prepared.base_identity["name"],
                                      "base.sha256": prepared.base_identity["sha256"]})
    tracking.log_metrics(mlflow, pid, {f"base/{k}": v for k, v in prepared.base_metrics.items()}, step=0)
    for name, metrics in prepared.baselines.items():
        tracking.log_metrics(mlflow, pid, {f"baseline/{name}/{k}": v for k, v in metrics.items()}, step=0)
    mlflow.log_artifact(pid, str(study.file))
    return name, exp_id, pid
