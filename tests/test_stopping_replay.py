"""benchmarks/stopping_replay.py: Ray's ASHA rule and synchronous halving replayed on known curves."""

from __future__ import annotations

import json

import pytest

from benchmarks import stopping_replay as replay


def flat(qualities: list[float], epochs: int = 8) -> list[replay.Curve]:
    """Trials whose objective is the same at every epoch, each epoch one second long."""
    return [replay.Curve((q,) * epochs, (1.0,) * epochs) for q in qualities]


def test_synchronous_halving_keeps_the_best_quarter_at_each_rung():
    trials = flat([float(q) for q in range(16)])
    ran = replay.synchronous(trials, rf=4)
    assert replay.rungs(1, 4, 8) == [1, 4]
    assert sum(ran) == 16 + 4 * 3 + 1 * 4  # the ideal 25% of 128
    assert ran[15] == 8 and sorted(ran, reverse=True)[:4] == [8, 4, 4, 4]
    assert replay.outcome(trials, ran) == (32, 15.0)


def test_rays_asha_rule_pays_for_not_waiting_when_better_trials_arrive_later():
    """Worst first, every arrival beats all that came before it, so ASHA stops nobody; best first,
    it stops every trial but the first at the first rung (the second runs beside the first and
    reports just after it)."""
    rising = flat([float(q) for q in range(16)])
    assert replay.asynchronous(rising, rf=4) == [8] * 16
    falling = flat([float(q) for q in range(16)][::-1])
    assert replay.asynchronous(falling, rf=4) == [8] + [1] * 15
    assert replay.outcome(falling, replay.asynchronous(falling, rf=4))[1] == 15.0


def test_results_are_compared_in_the_order_their_epochs_end():
    """A trial that started second but trains faster reaches the rung first and passes it unopposed;
    the slower one is then compared with it, as is the trial started in the slot it frees."""
    slow, fast, third = replay.Curve((1.0,) * 8, (10.0,) * 8), replay.Curve((2.0,) * 8, (1.0,) * 8), \
        replay.Curve((0.5,) * 8, (1.0,) * 8)
    assert replay.asynchronous([slow, fast, third], rf=4) == [1, 8, 1]
    assert replay.asynchronous(flat([1.0, 2.0, 0.5]), rf=4) == [8, 8, 1]  # equal epochs: start order


def write_search(folder, epochs_per_trial):
    """A finished search as platform.tune leaves one: its summary and its SQLite MLflow store."""
    from trainables import tracking

    folder.mkdir(parents=True)
    mlflow = tracking.client(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.create_experiment("replay", artifact_location=(folder / "artifacts").as_uri())
    trials = []
    for n, epochs in enumerate(epochs_per_trial):
        run_id = mlflow.create_run(experiment).info.run_id
        started = 1_000_000 + 100_000 * n
        for epoch in range(1, epochs + 1):  # trial n scores n + epoch/10 after each 2-s epoch
            mlflow.log_metric(run_id, "valid/sdr", n + epoch / 10, timestamp=started + 2000 * epoch, step=epoch)
        trials.append({"run_id": run_id, "started_at": started})
    trials.reverse()  # the summary's order is not the start order
    (folder / "summary.json").write_text(json.dumps({"objective": {"metric": "valid/sdr", "mode": "max"},
                                                     "trials": trials}))


def test_curves_are_read_from_a_search_in_start_order_with_each_epochs_duration(tmp_path):
    write_search(tmp_path / "random-seed0", [2, 2, 2])
    got = replay.curves(tmp_path / "random-seed0")
    assert [c.values for c in got] == [(0.1, 0.2), (1.1, 1.2), (2.1, 2.2)]
    assert {c.seconds for c in got} == {(2.0, 2.0)}


def test_the_table_compares_each_rule_with_random_search(tmp_path, capsys):
    write_search(tmp_path / "random-seed0", [8] * 16)
    replay.main([str(tmp_path), "--rf", "4", "--grace", "1", "2"])
    rows = {line[:12].strip(): line.split()[-3:] for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows == {"random": ["128.0", "100%", "1/1"],
                    "sha g1 rf4": ["32.0", "25%", "1/1"],  # the best trial started last: kept
                    "asha g1 rf4": ["128.0", "100%", "1/1"],  # rising: ASHA stops nobody
                    "sha g2 rf4": ["56.0", "44%", "1/1"],  # one rung, at epoch 2: 16 x 2 + 4 x 6
                    "asha g2 rf4": ["128.0", "100%", "1/1"]}


def test_a_folder_without_random_searches_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="no random-seed.*summary.json; run benchmarks.search_efficiency"):
        replay.main([str(tmp_path)])


def test_a_search_that_stopped_trials_is_refused(tmp_path):
    write_search(tmp_path / "random-seed0", [2, 1])
    with pytest.raises(SystemExit, match="different numbers of epochs"):
        replay.curves(tmp_path / "random-seed0")
