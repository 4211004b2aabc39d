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
    assert replay.synchronous(flat([0.0, 1.0, 2.0]), rf=4) == [1, 1, 8]  # 3 // 4 is 0: one goes on


def test_the_rungs_are_rays_milestones():
    from ray.tune.schedulers.async_hyperband import _Bracket

    for grace in (1, 2, 3):
        for rf in (2, 3, 4, 8, 16):
            for max_t in (4, 8, 9, 27, 64, 100):
                ray = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs if m < max_t)
                assert replay.rungs(grace, rf, max_t) == ray, (grace, rf, max_t)


def test_a_stopped_trial_counts_only_the_epochs_it_ran():
    """A late bloomer stopped at the first rung: its later epochs are never reached."""
    steady, late = replay.Curve((1.0,) * 8, (1.0,) * 8), replay.Curve((0.5,) + (9.0,) * 7, (1.0,) * 8)
    ran = replay.synchronous([steady, late], rf=2)
    assert ran == [8, 1]
    assert replay.outcome([steady, late], ran) == (9, 1.0)


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
    # each epoch lasts its own time: the better trial reaches epoch 4 first (44 s against 62 s)
    first = replay.Curve((1.0,) * 8, (1.0, 1.0, 30.0, 30.0, 1.0, 1.0, 1.0, 1.0))
    second = replay.Curve((2.0,) * 8, (2.0, 40.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert replay.asynchronous([first, second], rf=4) == [4, 8]


def write_search(folder, curves: list[list[float]], logged_twice: dict[int, int] | None = None):
    """A finished search as platform.tune leaves one: its summary and its SQLite MLflow store.
    Trial n starts at n x 100 s and each epoch takes 2 s; ``logged_twice`` {trial: epoch} logs an
    epoch again 1 s later with its value plus 1 (a retried epoch)."""
    from trainables import tracking

    folder.mkdir(parents=True)
    mlflow = tracking.client(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.create_experiment("replay", artifact_location=(folder / "artifacts").as_uri())
    trials = []
    for n, values in enumerate(curves):
        run_id = mlflow.create_run(experiment).info.run_id
        started = 1_000_000 + 100_000 * n
        for epoch, value in enumerate(values, 1):
            mlflow.log_metric(run_id, "valid/sdr", value, timestamp=started + 2000 * epoch, step=epoch)
            if (logged_twice or {}).get(n) == epoch:
                mlflow.log_metric(run_id, "valid/sdr", value + 1, timestamp=started + 2000 * epoch + 1000, step=epoch)
        trials.append({"trial_id": f"t{n}", "run_id": run_id, "started_at": started, "epochs": len(values)})
    trials.reverse()  # the summary's order is not the start order
    (folder / "summary.json").write_text(json.dumps({"objective": {"metric": "valid/sdr", "mode": "max"},
                                                     "trials": trials}))


def test_curves_are_read_from_a_search_in_start_order_with_each_epochs_duration(tmp_path):
    write_search(tmp_path / "random-seed0", [[0.1, 0.2], [1.1, 1.2], [2.1, 2.2]], logged_twice={1: 1})
    got = replay.curves(tmp_path / "random-seed0")
    # the epoch logged twice keeps its later value and its first end
    assert [c.values for c in got] == [(0.1, 0.2), (2.1, 1.2), (2.1, 2.2)]
    assert {c.seconds for c in got} == {(2.0, 2.0)}


def test_the_table_shows_which_rules_lose_the_best_trial(tmp_path, capsys):
    """Trial 3 scores least at epoch 1 and most from epoch 2 on: halving at epoch 1 loses it."""
    curves = [[n / 100 + epoch / 10 for epoch in range(1, 9)] for n in range(16)]
    curves[3] = [0.0] + [9.0] * 7
    write_search(tmp_path / "random-seed0", curves)
    replay.main([str(tmp_path), "--rf", "4", "--grace", "1", "2"])
    rows = {line[:12].strip(): line.split()[-4:] for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows.keys() == {"random", "asha g1 rf4", "sha g1 rf4", "asha g2 rf4", "sha g2 rf4"}
    assert rows["random"] == ["9.000", "128.0", "100%", "1/1"]
    assert rows["sha g1 rf4"] == ["0.950", "32.0", "25%", "0/1"]  # trial 15 at epoch 8 is the best it keeps
    assert rows["sha g2 rf4"] == ["9.000", "56.0", "44%", "1/1"]  # 16 x 2 + 4 x 6


def test_bad_arguments_and_folders_are_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="no random-seed.*summary.json; run benchmarks.search_efficiency"):
        replay.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="^--rf 1: must be at least 2$"):
        replay.main([str(tmp_path), "--rf", "4", "1"])
    with pytest.raises(SystemExit, match="^--grace 0: must be at least 1$"):
        replay.main([str(tmp_path), "--grace", "0"])


def test_a_search_that_stopped_trials_is_refused(tmp_path):
    write_search(tmp_path / "random-seed0", [[0.1, 0.2], [1.1]])
    with pytest.raises(SystemExit, match="different numbers of epochs"):
        replay.curves(tmp_path / "random-seed0")
