"""The locked cluster's pieces, run here for real: the secrets ``ray up`` makes on the head
(scripts/cluster_secrets.sh), and the MLflow tracking server's basic auth with them: refused
without credentials or with a wrong password, and open to a client that has the credentials file
every node gets (what a trial on a worker uses)."""

from __future__ import annotations

import configparser
import os
import re
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from servers import MlflowServer

ROOT = Path(__file__).resolve().parents[1]
SECRETS = [".ray/auth_token", ".mlflow/credentials", "rankhouse-runs/mlflow-auth.ini",
           "rankhouse-runs/mlflow-secret-key", ".pgpass"]


@pytest.fixture
def head(tmp_path) -> Path:
    """A head node's home folder after ``ray up`` ran the secrets script."""
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "cluster_secrets.sh")], env={**os.environ, "HOME": str(home)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return home


def test_the_secrets_are_made_once_readable_by_their_owner_alone(head):
    before = {name: (head / name).read_text() for name in SECRETS}
    for name in SECRETS:
        assert stat.S_IMODE((head / name).stat().st_mode) == 0o600, name
    assert re.fullmatch(r"[0-9a-f]{64}", before[".ray/auth_token"])
    assert re.fullmatch(r"127\.0\.0\.1:5432:rankhouse:rankhouse:[0-9a-f]{64}\n", before[".pgpass"])
    again = subprocess.run(["bash", str(ROOT / "scripts" / "cluster_secrets.sh"), "--pg-password"],
                           env={**os.environ, "HOME": str(head)}, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert {name: (head / name).read_text() for name in SECRETS} == before  # a second `ray up` keeps them
    assert again.stdout.strip() == before[".pgpass"].strip().rsplit(":", 1)[1]
    # the server's admin is the user every client signs in as
    creds, server = configparser.ConfigParser(), configparser.ConfigParser()
    creds.read(head / ".mlflow" / "credentials")
    server.read(head / "rankhouse-runs" / "mlflow-auth.ini")
    assert server["mlflow"]["admin_username"] == creds["mlflow"]["mlflow_tracking_username"]
    assert server["mlflow"]["admin_password"] == creds["mlflow"]["mlflow_tracking_password"]
    assert server["mlflow"]["default_permission"] == "NO_PERMISSIONS"


def client_logs_a_run(url: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """A separate process, as a trial is: its MLflow client finds the credentials in ~/.mlflow."""
    code = ("import sys; from mlflow.tracking import MlflowClient; c = MlflowClient(sys.argv[1]); "
            "e = c.create_experiment('trials'); r = c.create_run(e); c.log_metric(r.info.run_id, 'valid/sdr', 1.5); "
            "print(c.get_run(r.info.run_id).data.metrics)")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return subprocess.run([sys.executable, "-c", code, url], env={**environ, "HOME": str(home), **env},
                          capture_output=True, text=True, timeout=120)


class ClusterTrackingServer(MlflowServer):
    """The head's tracking server, started by the script cluster.yaml runs (on a SQLite store here)."""

    def argv(self) -> list[str]:
        return ["bash", str(ROOT / "scripts" / "tracking_server.sh"), self.store, "127.0.0.1", str(self.port), "1"]


def test_the_tracking_server_refuses_anyone_without_the_credentials(head, tmp_path):
    with ClusterTrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", {**os.environ, "HOME": str(head)}) as server:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert refused.value.code == 401
        stranger = tmp_path / "stranger"  # a home with no credentials file
        stranger.mkdir()
        assert client_logs_a_run(server.url, stranger).returncode != 0
        wrong = client_logs_a_run(server.url, head, MLFLOW_TRACKING_PASSWORD="guess")
        assert wrong.returncode != 0 and "401" in wrong.stderr
        trial = client_logs_a_run(server.url, head)
        assert trial.returncode == 0, trial.stderr[-2000:]
        assert "{'valid/sdr': 1.5}" in trial.stdout
