"""A team's database: ``tracking.backend: postgresql://…`` puts the MLflow store and the Optuna
record of a real search in a real PostgreSQL server on 127.0.0.1, and promotion reads the search
from there and registers into it. Nothing of either lands in the output folder's SQLite files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from servers import free_port, postgres

ROOT = Path(__file__).resolve().parents[1]
SPACE = """
study: team
model: {family: htdemucs, base: embedded, sources: [kick, hihat, bass, other, vocals],
        parents: {kick: drums, hihat: drums}}
data: {root: embedded, embedded: {preset: techhouse, songs: 4, seconds: 6.0, seed: 0}, segment: 3.0}
train: {epochs: 2, steps_per_epoch: 12, batch_size: 2, seed: 0, valid_max_seconds: 4.0}
lora: {rank: 4, alpha: 8.0}
optim: {lr: 3.0e-3, schedule: constant}
search:
  num_samples: 2
  max_concurrent: 2
  scheduler: {type: fifo}
  space:
    lora.rank: {type: choice, values: [4, 8]}
resources: {cpus_per_worker: 0.9}
tracking: {output: OUT, backend: BACKEND}
registry:
  model_name: team-htdemucs
  holdout:
    root: embedded
    embedded: {preset: techhouse, songs: 3, seconds: 6.0, seed: 1000, valid: 2}
    max_seconds: 3.0
"""
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    work = tmp_path_factory.mktemp("team")
    with postgres() as pg:
        space = work / "team.yaml"
        space.write_text(SPACE.replace("OUT", str(work / "out")).replace("BACKEND", pg.url))
        env = {**os.environ, "RANKHOUSE_HOME": str(work / "home")}

        def run(module: str, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", module, str(space), *args], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=1200)

        searched = run("platform.tune", "--json", str(work / "summary.json"))
        assert searched.returncode == 0, searched.stdout[-3000:] + searched.stderr[-3000:]
        promoted = run("platform.promote", "--json", str(work / "decision.json"))
        yield {"pg": pg, "work": work, "env": env, "search": searched, "promote": promoted,
               "summary": json.loads((work / "summary.json").read_text())}


def test_the_search_s_runs_and_record_are_in_postgres_not_in_sqlite_files(team):
    import optuna

    from platform import database
    from trainables import tracking

    pg, summary = team["pg"], team["summary"]
    assert summary["tracking_uri"] == pg.url and f"tracking: {pg.url}" in team["search"].stdout
    assert not list((team["work"] / "out").glob("*.db"))
    mlflow = tracking.client(pg.url)
    assert mlflow.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    runs = [mlflow.get_run(t["run_id"]) for t in summary["trials"]]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(tracking.epochs(mlflow, r.info.run_id, "valid/sdr")) == 2 for r in runs)
    # the two trials ran side by side: each started before the other finished
    (a, b) = sorted(runs, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time
    record = optuna.load_study(study_name=f"team-{summary['parent_run_id']}",
                               storage=database.optuna_record(pg.url, team["work"]))
    assert sorted(t.user_attrs["ray_trial_id"] for t in record.trials) == sorted(t["trial_id"]
                                                                                 for t in summary["trials"])


def test_promotion_reads_the_search_from_postgres_and_registers_there(team):
    from trainables import tracking

    proc = team["promote"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    decision = json.loads((team["work"] / "decision.json").read_text())
    assert decision["decision"] == "promoted" and decision["version"] == "1"
    assert decision["candidate"]["run_id"] == team["summary"]["best"]["run_id"]
    version = tracking.client(team["pg"].url).get_model_version_by_alias("team-htdemucs", "champion")
    assert str(version.version) == "1" and version.run_id == decision["candidate"]["run_id"]


def test_optuna_dashboard_opens_the_record(team):
    """The README's optuna-dashboard command, against the record's URL."""
    from platform import database

    port = free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(dashboard), database.optuna_record(team["pg"].url, team["work"]), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer in 60 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    shown = {s["study_name"]: s for s in studies}
    assert f"team-{team['summary']['parent_run_id']}" in shown


def test_an_unreachable_server_is_one_line_before_any_work(tmp_path):
    port = free_port()  # nothing listens here
    space = tmp_path / "team.yaml"
    space.write_text(SPACE.replace("OUT", str(tmp_path / "out")).replace(
        "BACKEND", f"postgresql://rankhouse:s3cret@127.0.0.1:{port}/rankhouse"))
    proc = subprocess.run([sys.executable, "-m", "platform.tune", str(space)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "RANKHOUSE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith(f"rankhouse: error: {space}: tracking.backend postgresql://rankhouse:***@127.0.0.1:{port}/")
    assert "Connection refused" in line and "s3cret" not in line
    assert not (tmp_path / "home" / "corpora").exists()  # refused before rendering anything
