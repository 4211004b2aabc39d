"""Study plots (platform/report.py) from a real Optuna study in SQLite and a real MLflow store:
a parent run, child runs as trials log them, and the summary ``platform.summary.summarize`` makes."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from platform import report, spaces, study_runs
from platform.summary import summarize
from trainables import tags, tracking

PNG = b"\x89PNG\r\n\x1a\n"
STUDY = "techhouse"
# (trial id, trainable params, valid/sdr per epoch, end time): completion order differs from objective order
TRIALS = [("t1", 12_000, [1.0, 2.0], 5_000), ("t2", 48_000, [2.5, 3.5], 2_000), ("t3", 3_000, [0.5], 3_000),
          ("t4", 96_000, [3.0, 2.8], 9_000)]


@pytest.fixture
def store(tmp_path):
    """A parent run with four finished child runs, as a search leaves them: (uri, client, parent id, summary)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    exp = client.create_experiment(STUDY, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=f"{STUDY}-study", tags={tags.STUDY: STUDY}).info.run_id
    results = []
    for tid, params, sdrs, end in TRIALS:
        run_id, _ = tracking.child_run(client, exp, parent, STUDY, tid, f"trial_{tid}")
        tracking.log_params(client, run_id, {"trainable_params": params, "lora.rank": params // 1500,
                                             "rank.encoder.0.conv": params // 1500, "rank.encoder.1.conv": 4})
        for epoch, sdr in enumerate(sdrs, 1):
            tracking.log_metrics(client, run_id, {"valid/sdr": sdr, "valid/sdr/kick": sdr + 1}, step=epoch)
        client.set_tag(run_id, "rankhouse.best_epoch", "1")
        client.set_terminated(run_id, status="FINISHED" if len(sdrs) == 2 else "KILLED", end_time=end)
        # what Tune holds of a trial: its sample, nested in the config sections it belongs in
        results.append(SimpleNamespace(path=f"/ray/{STUDY}/trial_{tid}", config={"lora": {"rank": params // 1500}}))
    study = SimpleNamespace(name=STUDY, config={"objective": {"metric": "valid/sdr", "mode": "max"}},
                            params=[spaces.Param(("lora", "rank"), "lora.rank", "choice", {"values": [1, 2]}, {})])
    prepared = SimpleNamespace(base_identity={"name": "tiny", "sha256": "0" * 64}, base_metrics={"valid/sdr": 0.8},
                               baselines={"silence": {"valid/sdr": 0.0}})
    summary = summarize(study, results, prepared, uri, STUDY, exp, parent)
    return uri, client, parent, summary


def objective(trial: optuna.Trial) -> float:
    """Define-by-run like platform.spaces.DefineByRun: warmup exists only for the cosine schedule."""
    rank = trial.suggest_int("lora.rank", 2, 64, log=True)
    schedule = trial.suggest_categorical("optim.schedule", ["constant", "cosine"])
    if schedule == "cosine":
        trial.suggest_float("optim.warmup", 0.0, 0.3)
    trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
    return math.log2(rank)  # only the rank matters


def optuna_study(tmp_path: Path, name: str, trials: int) -> str:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=trials)
    return url


def artifacts(client, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, report.ARTIFACT_PATH)}


def test_four_plots_are_logged_to_the_parent_run(store, tmp_path):
    uri, client, parent, summary = store
    name = study_runs.optuna_study_name(SimpleNamespace(name=STUDY), parent)
    url = optuna_study(tmp_path, name, trials=24)
    made = report.study_plots(summary, uri, parent, url, name, tmp_path / "plots")
    assert made == {n: tmp_path / "plots" / f"{n}.png"
                    for n in (report.HISTORY, report.PARAMS, report.IMPORTANCES, report.HEATMAP)}
    assert artifacts(client, parent) == {f"{n}.png" for n in made}
    local = Path(client.download_artifacts(parent, report.ARTIFACT_PATH))
    assert all((local / f"{n}.png").read_bytes()[:8] == PNG for n in made)
    assert not [k for k in client.get_run(parent).data.tags if k.startswith(tags.PLOT_SKIPPED)]


def test_the_tables_show_the_tasks_baselines_beside_the_base(store, capsys):
    from platform.summary import markdown, print_table

    summary = store[3]
    assert summary["baselines"] == {"silence": {"valid/sdr": 0.0}}
    print_table(summary)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("silence"))
    assert row.split()[1] == "0.000" and "(baseline, cannot listen)" in row
    assert lines.index(row) == next(i for i, line in enumerate(lines) if line.startswith("base ")) + 1
    assert "| silence | | | 0.000 | (baseline) |" in markdown(summary)


def test_history_is_in_completion_order_with_the_running_best(store):
    uri, client, parent, summary = store
    assert [t["trial_id"] for t in summary["trials"]] == ["t2", "t4", "t1", "t3"]  # the summary: by objective
    assert [t["ended_at"] for t in summary["trials"]] == [2_000, 9_000, 5_000, 3_000]
    done, running = report.history(summary)
    assert [t["trial_id"] for t in done] == ["t2", "t3", "t1", "t4"]  # by end time
    assert [t["best"] for t in done] == [3.5, 0.5, 2.0, 3.0]
    assert running == [3.5, 3.5, 3.5, 3.5]
    summary["objective"]["mode"] = "min"
    assert report.history(summary)[1] == [3.5, 0.5, 0.5, 0.5]


def test_importances_assess_conditional_parameters(tmp_path):
    url = optuna_study(tmp_path, "cond", trials=24)
    trials = optuna.load_study(study_name="cond", storage=url).trials
    assert 0 < sum("optim.warmup" in t.params for t in trials) < len(trials)  # really conditional
    scores, left_out, completed = report.importances(url, "cond")
    assert completed == 24 and left_out == []
    assert set(scores) == {"lora.rank", "optim.schedule", "optim.warmup", "optim.lr"}
    assert sum(scores.values()) == pytest.approx(1.0)
    assert max(scores, key=scores.get) == "lora.rank"  # the only parameter the objective depends on


def test_one_trial_skips_importances_with_a_reason(store, tmp_path, capsys):
    uri, client, parent, summary = store
    url = optuna_study(tmp_path, "one", trials=1)
    made = report.study_plots(summary, uri, parent, url, "one", tmp_path / "plots")
    reason = made[report.IMPORTANCES]
    assert isinstance(reason, str) and "at least 2 completed Optuna trials" in reason and "has 1" in reason
    assert isinstance(made[report.HISTORY], Path) and isinstance(made[report.PARAMS], Path)
    assert artifacts(client, parent) == {f"{report.HISTORY}.png", f"{report.PARAMS}.png", f"{report.HEATMAP}.png"}
    assert client.get_run(parent).data.tags[tags.PLOT_SKIPPED + report.IMPORTANCES] == reason
    assert f"note: plot {report.IMPORTANCES} skipped: {reason}" in capsys.readouterr().out


def test_a_failed_trial_does_not_count_as_completed(tmp_path):
    url = optuna_study(tmp_path, "failed", trials=1)
    study = optuna.load_study(study_name="failed", storage=url)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(report.Skip, match="has 1"):
        report.importances(url, "failed")


def test_nothing_to_plot_is_skipped_never_raised(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    exp = client.create_experiment("empty", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp).info.run_id
    summary = {"study": "empty", "objective": {"metric": "valid/sdr", "mode": "max"}, "base": {"metrics": {}},
               "trials": [], "best": None}
    made = report.study_plots(summary, uri, parent, f"sqlite:///{tmp_path / 'optuna.db'}", "missing", tmp_path / "p")
    assert made == {report.HISTORY: "no trial reported valid/sdr",
                    report.PARAMS: "no trial logged both trainable_params and valid/sdr",
                    report.IMPORTANCES: f"no Optuna study 'missing' in sqlite:///{tmp_path / 'optuna.db'}",
                    report.HEATMAP: "no trial produced an adapter"}
    assert artifacts(client, parent) == set()
    run_tags = client.get_run(parent).data.tags
    assert {k for k in run_tags if k.startswith(tags.PLOT_SKIPPED)} == {tags.PLOT_SKIPPED + n for n in made}
