"""The search's bookkeeping around a trial's training function, on real local Ray, Optuna and MLflow.

``platform.tune.run_search(train=...)`` runs the platform's trial wrapper (MLflow child run,
params, metrics per epoch, the best epoch's adapter artifact, Tune checkpoints, the run's final
status) around ``benchmarks.scheduling.synthetic_train``, a function with ``loop.train``'s
signature that sleeps instead of training: what the scheduling benchmark measures. It also
shows that Tune runs the trials of a search in one reused process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS = 4, 2


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    import optuna

    from platform import study_runs
    from platform.summary import summarize
    from synthetic_search import synthetic_search

    s = synthetic_search(tmp_path_factory.mktemp("bookkeeping"), [
        f"search.num_samples={TRIALS}", "search.max_concurrent=1", "search.scheduler.type=fifo",
        f"train.epochs={EPOCHS}"])
    summary = summarize(s.study, s.results, s.prepared, s.uri, s.study.name, s.exp_id, s.parent_id)
    optuna_trials = optuna.load_study(study_name=study_runs.optuna_study_name(s.study, s.parent_id),
                                      storage=study_runs.optuna_storage_url(s.study, s.out)).get_trials()
    return summary, optuna_trials, s.uri


@pytest.mark.slow
def test_every_trial_has_one_finished_run_with_every_epoch_and_its_adapter(searched):
    from trainables import tracking

    summary, _, uri = searched
    mlflow = tracking.client(uri)
    assert len(summary["trials"]) == TRIALS
    assert len({t["trial_id"] for t in summary["trials"]}) == TRIALS
    for t in summary["trials"]:
        assert t["status"] == "FINISHED"
        steps = [m.step for m in mlflow.get_metric_history(t["run_id"], "valid/sdr")]
        assert steps == list(range(1, EPOCHS + 1))
        names = {f.path for f in mlflow.list_artifacts(t["run_id"], "adapter")}
        assert names == {"adapter/adapter_model.safetensors"}
        assert mlflow.get_run(t["run_id"]).data.params["sampled.lora.rank"] == str(t["config"]["lora.rank"])


@pytest.mark.slow
def test_the_summary_ranks_trials_by_their_best_epoch_and_optuna_saw_each(searched):
    summary, optuna_trials, _ = searched
    bests = [t["best"] for t in summary["trials"]]
    assert bests == sorted(bests, reverse=True)
    assert summary["best"]["run_id"] == summary["trials"][0]["run_id"]
    assert [t.state.name for t in optuna_trials] == ["COMPLETE"] * TRIALS
    assert sorted(t.value for t in optuna_trials) == pytest.approx(sorted(bests))


@pytest.mark.slow
def test_tune_reuses_one_process_for_the_trials_of_a_search(searched):
    from trainables import tracking

    summary, _, uri = searched
    mlflow = tracking.client(uri)
    pids = {mlflow.get_metric_history(t["run_id"], "pid")[0].value for t in summary["trials"]}
    assert len(pids) == 1  # one at a time, each in the process the first one started in


def test_a_trial_process_imports_no_torch_for_a_training_function_that_is_not_the_loop():
    """What a trial process imports for the search's bookkeeping (the trial wrapper, its
    checkpoint names, Ray Tune and Train, MLflow's client) holds no torch: 64 trial processes of
    ``benchmarks/scale.py`` fit in 24 GiB only without it (~120 MB more each)."""
    import subprocess
    import sys

    imported = subprocess.run(
        [sys.executable, "-c", "import sys, ray.train, ray.tune, mlflow.tracking, trainables.trial; from trainables "
                               "import checkpoint; print(sorted({'torch', 'peft'} & set(sys.modules)))"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.strip() == "[]"
