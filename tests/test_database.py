"""``tracking.backend``: which database holds a study's MLflow store and Optuna record, and that a
password in its URL is never printed or logged (the real server: tests/test_postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform import database, spaces, study_runs
from trainables import tracking
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]
TECHHOUSE = ROOT / "search_spaces" / "techhouse.yaml"
PG = "postgresql://team:s3cret@db.internal:5432/rankhouse"


def test_sqlite_is_the_default_and_keeps_both_in_the_output_folder(tmp_path):
    study = spaces.load(TECHHOUSE, [f"tracking.output={tmp_path}"])
    assert study.config["tracking"]["backend"] == "sqlite"
    assert study_runs.tracking_uri(study, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert study_runs.optuna_storage_url(study, tmp_path) == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_postgresql_holds_mlflow_in_its_database_and_optuna_in_its_own_schema(tmp_path):
    study = spaces.load(TECHHOUSE, [f"tracking.backend={PG}"])
    assert study_runs.tracking_uri(study, tmp_path) == PG
    assert study_runs.optuna_storage_url(study, tmp_path) == f"{PG}?options=-csearch_path%3Doptuna"
    assert database.optuna_record(f"{PG}?sslmode=require", tmp_path).endswith("?sslmode=require&options=-csearch_path%3Doptuna")
    # a tracking server in front of the database keeps the MLflow side; the record stays direct
    served = spaces.load(TECHHOUSE, [f"tracking.backend={PG}", "tracking.uri=http://10.0.0.5:5000"])
    assert study_runs.tracking_uri(served, tmp_path) == "http://10.0.0.5:5000"


def test_another_database_is_refused_naming_the_key():
    with pytest.raises(RankhouseError, match=r"tracking\.backend.*expected sqlite or a postgresql:// URL"):
        spaces.load(TECHHOUSE, ["tracking.backend=mysql://root@localhost/db"])


@pytest.mark.parametrize("text, shown", [
    (PG, "postgresql://team:***@db.internal:5432/rankhouse"),
    ("postgresql+psycopg://u:p@h/db?x=1", "postgresql+psycopg://u:***@h/db?x=1"),
    ("postgresql://team@db.internal/rankhouse", "postgresql://team@db.internal/rankhouse"),  # ~/.pgpass
    ("http://10.0.0.5:5000", "http://10.0.0.5:5000"),
])
def test_a_password_in_a_url_is_masked(text, shown):
    assert tracking.redact(text) == shown


def test_logged_parameters_never_hold_the_password(tmp_path):
    mlflow = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.create_run(mlflow.create_experiment("e", artifact_location=(tmp_path / "a").as_uri()))
    tracking.log_params(mlflow, run.info.run_id, {"tracking.backend": PG, "lora.rank": 8})
    params = mlflow.get_run(run.info.run_id).data.params
    assert params == {"tracking.backend": "postgresql://team:***@db.internal:5432/rankhouse", "lora.rank": "8"}


def test_a_server_that_does_not_answer_is_one_line_naming_the_file(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RankhouseError) as err:
        database.check(f"postgresql://team:s3cret@127.0.0.1:{port}/rankhouse", "team.yaml")
    message = str(err.value)
    assert message.startswith(f"team.yaml: tracking.backend postgresql://team:***@127.0.0.1:{port}/rankhouse: ")
    assert "Connection refused" in message and "s3cret" not in message and "\n" not in message


def test_a_loopback_database_is_refused_when_trials_run_on_other_nodes():
    with pytest.raises(RankhouseError, match=r"team\.yaml: tracking\.backend postgresql://rankhouse@127\.0\.0\.1:5432/"
                                             r"rankhouse is this node's own; .* tracking\.uri=http://"):
        database.check("postgresql://rankhouse@127.0.0.1:5432/rankhouse", "team.yaml", trials_elsewhere=True)
